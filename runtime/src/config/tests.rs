use std::collections::HashMap;
use std::time::Duration;

use super::source::rewrite_iii_defaults;
use super::*;
use crate::retry::Backoff;

const FILE: &str = "config.yaml";

/// A valid config with `trigger_config` lines inserted in the trigger's `config:` (6 spaces
/// of indent), so errors land on known lines: the trigger config starts at line 10.
fn with_trigger_config(trigger_config: &str) -> String {
    format!(
        "modules:
  - class: modules::queue::QueueModule
    config:
      adapter:
        class: modules::queue::BuiltinQueueAdapter
triggers:
  send-email:
    type: queue
    function: emails.send
    config:
      topic: emails.send
{trigger_config}"
    )
}

fn load(text: &str) -> Result<Config, ConfigError> {
    Config::from_yaml_with_variables(text, FILE, &HashMap::new())
}

fn load_with(text: &str, variables: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let variables = variables
        .iter()
        .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
        .collect();
    Config::from_yaml_with_variables(text, FILE, &variables)
}

/// Asserts the error names the file, the line and the key, and mentions `needle`.
fn assert_error(result: Result<Config, ConfigError>, line: u64, key: &str, needle: &str) {
    let err = result.expect_err("the config must be refused");
    let location = err.location().expect("a location");
    assert_eq!(location.file, FILE, "{err}");
    assert_eq!(location.line, line, "{err}");
    assert_eq!(err.key(), Some(key), "{err}");
    let text = err.to_string();
    assert!(
        text.starts_with(&format!("{FILE}:{line}:")),
        "the message must start with file:line: {text}"
    );
    assert!(text.contains(key), "the message must name the key: {text}");
    assert!(text.contains(needle), "expected {needle:?} in: {text}");
}

#[test]
fn the_shipped_config_yaml_is_valid() {
    let text = include_str!("../../../config.yaml");
    let config = load(text).expect("config.yaml must load");
    assert_eq!(config.adapter.class, AdapterClass::Builtin);
    let send = config.trigger("send-email").expect("send-email");
    assert_eq!(send.retry.max_attempts, 3);
    assert_eq!(
        send.retry.backoff,
        Backoff::Fixed(Duration::from_millis(200))
    );
    assert_eq!(
        send.dead_letter_topic.as_ref().map(|t| t.as_str()),
        Some("emails.failed")
    );
    assert!(
        config
            .topics
            .keys()
            .any(|topic| topic.as_str() == "emails.failed")
    );
}

#[test]
fn an_unknown_key_is_refused_with_its_line() {
    assert_error(
        load(&with_trigger_config("      concurency: 4\n")),
        12,
        "triggers.send-email.config.concurency",
        "concurency",
    );
}

#[test]
fn a_wrong_type_is_refused_with_its_line() {
    assert_error(
        load(&with_trigger_config("      concurrency: many\n")),
        12,
        "triggers.send-email.config.concurrency",
        "u32",
    );
}

#[test]
fn an_out_of_range_concurrency_names_the_range() {
    assert_error(
        load(&with_trigger_config("      concurrency: 500\n")),
        12,
        "triggers.send-email.config.concurrency",
        "between 1 and 100",
    );
}

#[test]
fn an_unknown_adapter_class_lists_the_known_ones() {
    let text = with_trigger_config("").replace(
        "modules::queue::BuiltinQueueAdapter",
        "modules::queue::KafkaAdapter",
    );
    assert_error(
        load(&text),
        5,
        "modules[0].config.adapter.class",
        "known classes: modules::queue::BuiltinQueueAdapter",
    );
}

#[test]
fn a_bad_condition_is_refused_at_startup() {
    assert_error(
        load(&with_trigger_config(
            "      condition: 'data.priority =='\n",
        )),
        12,
        "triggers.send-email.config.condition",
        "CEL",
    );
    assert_error(
        load(&with_trigger_config("      condition: 'payload.x == 1'\n")),
        12,
        "triggers.send-email.config.condition",
        "`payload`",
    );
}

#[test]
fn a_bad_topic_name_is_refused_with_its_rule() {
    let text = with_trigger_config("").replace("topic: emails.send", "topic: emails.*");
    assert_error(
        load(&text),
        11,
        "triggers.send-email.config.topic",
        "wildcards",
    );
}

#[test]
fn a_bad_duration_says_how_to_write_one() {
    assert_error(
        load(&with_trigger_config("      visibility_timeout: soon\n")),
        12,
        "triggers.send-email.config.visibility_timeout",
        "\"30s\"",
    );
    assert_error(
        load(&with_trigger_config("      timeout: 30\n")),
        12,
        "triggers.send-email.config.timeout",
        "no unit",
    );
}

#[test]
fn a_missing_variable_without_default_is_named() {
    let text = with_trigger_config("").replace(
        "class: modules::queue::BuiltinQueueAdapter",
        "class: ${TOPIQ_TEST_ADAPTER}",
    );
    assert_error(
        load(&text),
        5,
        "modules[0].config.adapter",
        "TOPIQ_TEST_ADAPTER",
    );
}

#[test]
fn a_quoted_reference_is_refused_instead_of_kept_literally() {
    let text = with_trigger_config("").replace(
        "        class: modules::queue::BuiltinQueueAdapter\n",
        "        class: modules::queue::BuiltinQueueAdapter\n        config:\n          url: \"nats://${HOST}:4222\"\n",
    );
    let err = load_with(&text, &[("HOST", "example")]).expect_err("quoted");
    assert_eq!(err.key(), Some("modules[0].config.adapter.config.url"));
    assert!(err.to_string().contains("unquoted"), "{err}");
}

#[test]
fn variables_expand_with_compose_and_iii_defaults() {
    let text =
        with_trigger_config("      concurrency: ${WORKERS:-3}\n      batch_size: ${BATCH:2}\n")
            .replace("topic: emails.send", "topic: ${TOPIC}");
    let config = load_with(&text, &[("TOPIC", "orders.created")]).expect("valid");
    let trigger = config.trigger("send-email").expect("trigger");
    assert_eq!(trigger.topic.as_str(), "orders.created");
    assert_eq!(trigger.concurrency, 3);
    assert_eq!(trigger.batch_size, 2);
}

#[test]
fn a_secret_from_the_environment_never_appears_in_an_error() {
    let text = with_trigger_config("      concurrency: ${SECRET_TOKEN}\n");
    let err = load_with(&text, &[("SECRET_TOKEN", "hunter2-s3cr3t")]).expect_err("not a number");
    let text = err.to_string();
    assert!(
        !text.contains("hunter2-s3cr3t"),
        "the secret leaked: {text}"
    );
    assert!(text.contains("config.yaml:12:"), "{text}");
}

#[test]
fn retry_and_iii_retry_keys_together_are_refused() {
    let text = with_trigger_config(
        "      retry:
        backoff: fixed
        delay: 1s
      metadata:
        infrastructure:
          queue:
            max_retries: 2
",
    );
    assert_error(
        load(&text),
        13,
        "triggers.send-email.config.retry",
        "not both",
    );
}

#[test]
fn each_backoff_kind_builds_its_policy() {
    let exponential = with_trigger_config(
        "      retry:
        backoff: exponential
        initial: 100ms
        factor: 3
        max: 1s
        max_attempts: 6
",
    );
    let config = load(&exponential).expect("valid");
    let retry = &config.trigger("send-email").expect("trigger").retry;
    assert_eq!(retry.max_attempts, 6);
    assert_eq!(
        retry.backoff,
        Backoff::Exponential {
            initial: Duration::from_millis(100),
            factor: 3.0,
            max: Duration::from_secs(1)
        }
    );
    let custom = with_trigger_config(
        "      retry:
        backoff: custom
        delays: [1s, 5s]
",
    );
    let config = load(&custom).expect("valid");
    assert_eq!(
        config.trigger("send-email").expect("trigger").retry.backoff,
        Backoff::Custom(vec![Duration::from_secs(1), Duration::from_secs(5)])
    );
    let stray = with_trigger_config(
        "      retry:
        backoff: fixed
        delays: [1s]
",
    );
    assert_error(
        load(&stray),
        13,
        "triggers.send-email.config.retry",
        "`delays`",
    );
}

#[test]
fn max_retries_means_one_more_attempt() {
    let text = with_trigger_config(
        "      metadata:
        infrastructure:
          queue:
            max_retries: 3
            retry_delay_ms: 2000
",
    );
    let config = load(&text).expect("valid");
    let retry = &config.trigger("send-email").expect("trigger").retry;
    assert_eq!(retry.max_attempts, 4);
    assert_eq!(retry.backoff, Backoff::Fixed(Duration::from_secs(2)));
}

#[test]
fn a_dead_letter_topic_equal_to_the_topic_is_refused() {
    let text = with_trigger_config(
        "      metadata:
        infrastructure:
          queue:
            dead_letter_topic: emails.send
",
    );
    let err = load(&text).expect_err("loop");
    assert!(err.to_string().contains("own topic"), "{err}");
}

#[test]
fn a_handler_timeout_longer_than_the_visibility_timeout_warns() {
    let text = with_trigger_config("      timeout: 2m\n      visibility_timeout: 30s\n");
    let config = load(&text).expect("valid");
    assert_eq!(config.warnings.len(), 1, "{:?}", config.warnings);
    assert!(config.warnings[0].contains("visibility timeout"));
}

#[test]
fn adapter_options_the_adapter_does_not_take_are_refused() {
    let text = with_trigger_config("").replace(
        "        class: modules::queue::BuiltinQueueAdapter\n",
        "        class: modules::queue::BuiltinQueueAdapter\n        config:\n          url: nats://x\n",
    );
    let err = load(&text).expect_err("memory takes no url");
    assert!(err.to_string().contains("`url`"), "{err}");
    assert!(err.to_string().contains("max_messages"), "{err}");
}

#[test]
fn the_environment_file_replaces_whole_sections() {
    let folder = std::env::temp_dir().join(format!("topiq-config-{}", std::process::id()));
    std::fs::create_dir_all(&folder).expect("temp dir");
    let base = folder.join("config.yaml");
    std::fs::write(&base, with_trigger_config("")).expect("write base");
    std::fs::write(
        folder.join("config.staging.yaml"),
        "triggers:\n  other:\n    type: queue\n    function: builtin.log\n    config:\n      topic: other.topic\n",
    )
    .expect("write override");
    let config = Config::load_for_environment(&base, Some("staging")).expect("merged");
    let names: Vec<_> = config.triggers.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(
        names,
        vec!["other"],
        "the override's triggers replace the base's"
    );
    assert_eq!(
        config.adapter.class,
        AdapterClass::Builtin,
        "modules kept from the base"
    );
    let missing = Config::load_for_environment(&base, Some("production")).expect_err("no file");
    assert!(
        missing.to_string().contains("config.production.yaml"),
        "{missing}"
    );
    std::fs::remove_dir_all(&folder).ok();
}

#[test]
fn iii_default_syntax_is_rewritten_without_moving_lines() {
    let text = "a: ${X:default}\nb: ${Y:-kept}\nc: ${Z}\nd: $${LITERAL}\n";
    let rewritten = rewrite_iii_defaults(text);
    assert_eq!(
        rewritten,
        "a: ${X:-default}\nb: ${Y:-kept}\nc: ${Z}\nd: $${LITERAL}\n"
    );
}

#[test]
fn secrets_stay_out_of_topic_and_duration_errors() {
    let text = with_trigger_config("      visibility_timeout: ${SECRET_TIMEOUT}\n")
        .replace("topic: emails.send", "topic: ${SECRET_TOPIC}");
    let err = load_with(
        &text,
        &[("SECRET_TOPIC", "hunter2 topic"), ("SECRET_TIMEOUT", "5m")],
    )
    .expect_err("a topic with a space");
    assert!(
        !err.to_string().contains("hunter2"),
        "the secret leaked: {err}"
    );
    let text = with_trigger_config("      visibility_timeout: ${SECRET_TIMEOUT}\n");
    let err = load_with(&text, &[("SECRET_TIMEOUT", "hunter2")]).expect_err("not a duration");
    assert!(
        !err.to_string().contains("hunter2"),
        "the secret leaked: {err}"
    );
}

/// A minimal config followed by `rest` (top-level sections).
fn with_sections(rest: &str) -> String {
    format!(
        "modules:
  - class: modules::queue::QueueModule
    config:
      adapter:
        class: modules::queue::BuiltinQueueAdapter
{rest}"
    )
}

#[test]
fn http_functions_expand_variables_in_quoted_values_once() {
    let text = with_sections(
        "functions:
  hooks.send:
    http: { url: \"http://127.0.0.1:9000/${HOOK_PATH}\", timeout: 2s, headers: { Authorization: \"Bearer ${HOOK_TOKEN}\" } }
api:
  token: ${API_TOKEN}
",
    );
    // The unquoted token is expanded by the reader; a `${` inside its value stays as it is.
    let config = load_with(
        &text,
        &[
            ("HOOK_PATH", "hooks"),
            ("HOOK_TOKEN", "t0ken"),
            ("API_TOKEN", "pa${ss}wd"),
        ],
    )
    .expect("valid");
    let function = &config.functions[0];
    assert_eq!(function.url.as_str(), "http://127.0.0.1:9000/hooks");
    assert_eq!(function.headers["authorization"], "Bearer t0ken");
    assert_eq!(function.timeout, Duration::from_secs(2));
    assert_eq!(
        config.api.token.as_ref().map(Secret::expose),
        Some("pa${ss}wd")
    );
    // Neither the header's value nor the token shows in Debug output.
    let debug = format!("{config:?}");
    assert!(
        !debug.contains("t0ken") && !debug.contains("pa$"),
        "{debug}"
    );
}

#[test]
fn an_unset_variable_in_a_quoted_header_names_the_variable_and_the_key() {
    let text = with_sections(
        "functions:
  hooks.send:
    http:
      url: \"http://127.0.0.1:9000/\"
      headers:
        Authorization: \"Bearer ${HOOK_TOKEN}\"
",
    );
    assert_error(
        load(&text),
        11,
        "functions.hooks.send.http.headers.Authorization",
        "HOOK_TOKEN is not set",
    );
}

#[test]
fn http_function_urls_and_reserved_headers_are_checked() {
    let ftp = with_sections(
        "functions:
  hooks.send:
    http: { url: \"ftp://user:secret@example.com/x\" }
",
    );
    let err = load(&ftp).expect_err("ftp is refused").to_string();
    assert!(err.contains("http:// or https://"), "{err}");
    assert!(!err.contains("secret"), "{err}");
    let reserved = with_sections(
        "functions:
  hooks.send:
    http: { url: \"http://127.0.0.1:9000/\", headers: { Content-Type: text/plain } }
",
    );
    let err = load(&reserved).expect_err("reserved").to_string();
    assert!(err.contains("set by topiq"), "{err}");
}

#[test]
fn the_api_refuses_a_public_address_without_a_token() {
    let text = with_sections("api:\n  listen: 0.0.0.0:7720\n");
    assert_error(load(&text), 7, "api.listen", "set api.token");
    let with_token = with_sections("api:\n  listen: 0.0.0.0:7720\n  token: long-random\n");
    let config = load(&with_token).expect("a token makes it acceptable");
    assert_eq!(config.api.listen.port(), 7720);
    let defaults = load(&with_sections("")).expect("valid");
    assert_eq!(defaults.api.listen.to_string(), DEFAULT_API_LISTEN);
    assert_eq!(defaults.api.max_body_bytes, DEFAULT_MAX_BODY_BYTES);
}

#[test]
fn the_console_is_off_by_default_and_needs_the_api() {
    let defaults = load(&with_sections("")).expect("valid");
    assert_eq!(defaults.console, ConsoleSettings::default());
    assert!(!defaults.console.enabled);
    let on = load(&with_sections(
        "console:\n  enabled: true\n  read_only: true\n",
    ))
    .expect("valid");
    assert!(on.console.enabled && on.console.read_only);
    let without_api = with_sections("api:\n  enabled: false\nconsole:\n  enabled: true\n");
    assert_error(load(&without_api), 9, "console.enabled", "enable the API");
    let typo = with_sections("console:\n  enable: true\n");
    assert!(load(&typo).is_err(), "an unknown console key is refused");
}

#[test]
fn telemetry_is_off_by_default_and_checked_when_given() {
    let defaults = load(&with_sections("")).expect("valid");
    assert!(defaults.telemetry.otlp.is_none());
    assert_eq!(defaults.telemetry.log_format, LogFormat::Text);
    let on = load_with(
        &with_sections(
            "telemetry:
  service_name: billing
  log_format: json
  otlp:
    endpoint: \"http://127.0.0.1:4318\"
    protocol: http/json
    sampling_ratio: 0.25
    headers: { x-api-key: \"${OTLP_KEY}\" }
",
        ),
        &[("OTLP_KEY", "k3y")],
    )
    .expect("valid");
    let otlp = on.telemetry.otlp.as_ref().expect("otlp");
    assert_eq!(otlp.traces_url(), "http://127.0.0.1:4318/v1/traces");
    assert_eq!(otlp.protocol, OtlpProtocol::HttpJson);
    assert_eq!(otlp.headers[0].1.expose(), "k3y");
    assert!(!format!("{on:?}").contains("k3y"));
    let grpc = with_sections(
        "telemetry:\n  otlp: { endpoint: \"http://127.0.0.1:4317\", protocol: grpc }\n",
    );
    let err = load(&grpc).expect_err("grpc is refused").to_string();
    assert!(
        err.contains("telemetry.otlp.protocol") && err.contains("OTLP/HTTP"),
        "{err}"
    );
    let ratio = with_sections(
        "telemetry:\n  otlp: { endpoint: \"http://127.0.0.1:4318\", sampling_ratio: 2 }\n",
    );
    assert!(load(&ratio).is_err());
}

/// The base config with a `schedules:` section: its first schedule's name is on line 13,
/// its definition (where errors point) from line 14.
fn with_schedules(schedules: &str) -> String {
    format!("{}schedules:\n{schedules}", with_trigger_config(""))
}

#[test]
fn a_schedule_is_read_and_its_topic_declared() {
    let config = load(&with_schedules(
        "  nightly-report:
    cron: \"0 2 * * *\"
    timezone: Europe/Berlin
    topic: reports.generate
    data: { kind: nightly }
    catch_up: last
",
    ))
    .expect("valid");
    let schedule = &config.schedules[0];
    assert_eq!(schedule.name, "nightly-report");
    assert_eq!(schedule.spec.catch_up, topiq_runs::CatchUp::Last);
    assert_eq!(schedule.spec.data, serde_json::json!({"kind": "nightly"}));
    assert!(
        config
            .topics
            .keys()
            .any(|topic| topic.as_str() == "reports.generate")
    );
}

#[test]
fn a_bad_schedule_is_refused_with_its_line() {
    let bad_cron = "  nightly:\n    cron: \"0 0 2 * * *\"\n    topic: reports\n";
    assert_error(
        load(&with_schedules(bad_cron)),
        14,
        "schedules.nightly",
        "5-field cron",
    );
    let bad_zone =
        "  nightly:\n    cron: \"0 2 * * *\"\n    timezone: Moon/Base\n    topic: reports\n";
    assert_error(
        load(&with_schedules(bad_zone)),
        14,
        "schedules.nightly",
        "IANA",
    );
    let bad_name = "  \"nightly report\":\n    every: 1m\n    topic: reports\n";
    assert_error(
        load(&with_schedules(bad_name)),
        14,
        "schedules.nightly report",
        "letters, digits",
    );
    let unknown_key = "  nightly:\n    every: 1m\n    topic: reports\n    repeat: 3\n";
    let err = load(&with_schedules(unknown_key)).expect_err("refused");
    assert!(err.to_string().contains("repeat"), "{err}");
}

#[test]
fn a_schedules_topic_must_keep_keys_long_enough() {
    let text = with_schedules("  beat:\n    every: 1s\n    topic: beats\n").replace(
        "        class: modules::queue::BuiltinQueueAdapter\n",
        "        class: modules::queue::BuiltinQueueAdapter\n      topics:\n        beats: { idempotency_window: 5s }\n",
    );
    let err = load(&text).expect_err("refused");
    assert!(
        err.to_string().contains("schedules.beat.topic")
            && err.to_string().contains("idempotency_window"),
        "{err}"
    );
}

#[test]
fn priority_levels_are_checked_against_the_adapter() {
    let topics = |levels: u32, class: &str| {
        let options = if class == "JetStreamAdapter" {
            "{ url: \"nats://127.0.0.1:4222\" }"
        } else {
            "{}"
        };
        format!(
            "modules:
  - class: modules::queue::QueueModule
    config:
      adapter:
        class: modules::queue::{class}
        config: {options}
      topics:
        jobs:
          priority_levels: {levels}
"
        )
    };
    let config = load(&topics(3, "BuiltinQueueAdapter")).expect("valid");
    let jobs = TopicName::new("jobs").unwrap();
    assert_eq!(config.topics[&jobs].lanes, 3);
    assert_error(
        load(&topics(11, "BuiltinQueueAdapter")),
        9,
        "modules[0].config.topics.jobs.priority_levels",
        "must be 1 to 10",
    );
    if cfg!(feature = "jetstream") {
        let config = load(&topics(10, "JetStreamAdapter")).expect("valid");
        assert_eq!(config.topics[&jobs].lanes, 10);
    }
}

#[test]
fn priority_levels_beyond_the_adapters_lanes_are_refused() {
    let capabilities = topiq_adapter::Capabilities {
        max_lanes: 1,
        read_ahead_counts_settling: false,
        ..topiq_memory::CAPABILITIES
    };
    let unknown = serde_saphyr::Location::UNKNOWN;
    let levels = serde_saphyr::Spanned::new(2, unknown, unknown);
    let err = super::queue_module::priority_levels("c.yaml", "jobs", &levels, &capabilities)
        .expect_err("refused");
    assert!(
        err.to_string().contains("honours at most 1 priority level"),
        "{err}"
    );
}

/// A config with `topics` under the module and `triggers` (each a `name: options` line,
/// the options going under `config:` of a trigger on `accounts` calling `apply`).
fn ordered(topics: &str, triggers: &[(&str, &str)]) -> String {
    let triggers: String = triggers
        .iter()
        .map(|(name, options)| {
            format!(
                "  {name}:\n    type: queue\n    function: apply\n    config: {{ topic: accounts, {options} }}\n"
            )
        })
        .collect();
    format!(
        "modules:
  - class: modules::queue::QueueModule
    config:
      adapter: {{ class: modules::queue::BuiltinQueueAdapter }}
      topics:
        accounts: {{ {topics} }}
triggers:
{triggers}"
    )
}

#[test]
fn an_ordering_key_splits_its_topic_into_partitions() {
    let accounts = TopicName::new("accounts").unwrap();
    let config = load(&ordered("", &[("ledger", "ordering_key: data.key")])).expect("valid");
    assert_eq!(config.topics[&accounts].lanes, 8, "the default partitions");
    assert_eq!(config.ordering[&accounts].partitions, 8);
    let config = load(&ordered(
        "partitions: 3",
        &[
            ("ledger", "ordering_key: data.key"),
            ("audit", "concurrency: 2"),
        ],
    ))
    .expect("valid");
    assert_eq!(config.topics[&accounts].lanes, 3);
    assert!(config.trigger("audit").unwrap().ordering_key.is_none());
}

#[test]
fn ordering_keys_are_checked_where_they_are_written() {
    let key = "triggers.ledger.config.ordering_key";
    assert_error(
        load(&ordered("", &[("ledger", "ordering_key: attempt")])),
        11,
        key,
        "not known when a message is enqueued",
    );
    assert_error(
        load(&ordered(
            "",
            &[("ledger", "ordering_key: data.key, batch_size: 5")],
        )),
        11,
        key,
        "needs batch_size 1",
    );
    assert_error(
        load(&ordered(
            "",
            &[
                ("audit", "ordering_key: data.a"),
                ("ledger", "ordering_key: data.b"),
            ],
        )),
        15,
        key,
        "differs from `data.a`",
    );
    assert_error(
        load(&ordered(
            "priority_levels: 2",
            &[("ledger", "ordering_key: data.key")],
        )),
        11,
        key,
        "use per-key order or priority",
    );
}

#[test]
fn partitions_need_an_ordered_trigger_and_a_range() {
    let key = "modules[0].config.topics.accounts.partitions";
    assert_error(
        load(&ordered("partitions: 4", &[("audit", "concurrency: 2")])),
        6,
        key,
        "no trigger on accounts has an ordering_key",
    );
    assert_error(
        load(&ordered(
            "partitions: 33",
            &[("ledger", "ordering_key: data.key")],
        )),
        6,
        key,
        "must be 1 to 32",
    );
}
