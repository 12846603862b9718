//! The console in a real browser: `topiq run` on the in-memory adapter and on JetStream, and
//! Chromium driven over WebDriver doing what an operator does: every page loads without a
//! console error (and fits a phone's width), a redrive from the page delivers the message, a
//! run is cancelled and replayed, a trigger paused and resumed, a schedule fired, a message
//! enqueued from the form; the login and the read-only mode, and actions forged from
//! elsewhere refused. Screenshots of each page go to `target/console-screenshots/`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../support/mod.rs"]
mod support;

mod browser;

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use browser::Browser;
use support::{Broker, Parts, Receiver, Service, eventually};

macro_rules! on_every_adapter {
    ($($scenario:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    super::$scenario(super::Broker::Memory, "memory").await;
                }
            )*
        }
        mod jetstream {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    super::$scenario(super::Broker::jetstream(), "jetstream").await;
                }
            )*
        }
    };
}

on_every_adapter!(
    every_page_loads_without_console_errors,
    redrive_and_purge_from_the_page,
    cancel_and_replay_a_run,
    pause_a_trigger_and_see_it_stop,
    fire_a_schedule_now,
    enqueue_from_the_form,
    login_csrf_and_read_only,
);

const WAIT: Duration = Duration::from_secs(30);

/// Secrets of the config that no page may show.
const URL_SECRET: &str = "url-s3cret";
const HEADER_SECRET: &str = "header-s3cret";
const TOKEN: &str = "console-s3cret";

/// `orders` goes to `charge`, an HTTP function that fails (400, straight to the DLQ) until the
/// receiver's switch is on; `events` goes to `log` (`builtin.log`); schedule `beat` enqueues to
/// `events` every hour.
async fn start(broker: &Broker, receiver: &Receiver, api: &str, console: &str) -> Service {
    // Secrets in the function's URL and headers, which no page may show.
    let functions = format!(
        "switchable:\n  http:\n    url: \"{}?key={URL_SECRET}\"\n    timeout: 5s\n    headers: {{ authorization: \"Bearer {HEADER_SECRET}\" }}",
        receiver.url("switch")
    );
    let triggers = "charge:
  type: queue
  function: switchable
  config:
    topic: orders
    metadata: { infrastructure: { queue: { max_retries: 0, retry_delay_ms: 100 } } }
log:
  type: queue
  function: builtin.log
  config: { topic: events }";
    let extra = format!(
        "schedules:\n  beat: {{ every: 1h, topic: events, data: {{ beat: true }} }}\nconsole:\n  {console}"
    );
    let env: &[(&str, &str)] = if api.is_empty() {
        &[]
    } else {
        &[("TEST_API_TOKEN", TOKEN)]
    };
    Service::start(
        broker,
        Parts {
            topics: "orders: {}\nevents: {}",
            functions: &functions,
            api,
            triggers,
            extra: &extra,
            ..Parts::default()
        },
        env,
    )
    .await
}

/// A service whose console needs no login (no token) and takes actions.
async fn open_console(broker: &Broker, receiver: &Receiver) -> Service {
    start(broker, receiver, "", "enabled: true").await
}

async fn enqueue(service: &Service, topic: &str, data: Value) -> String {
    let result = service
        .ok("queue.enqueue", json!({"topic": topic, "data": data}))
        .await;
    result["message_id"].as_str().unwrap().to_owned()
}

async fn run_state(service: &Service, id: &str) -> Option<String> {
    let (status, body) = service.call("queue.run_get", json!({"id": id})).await;
    (status == StatusCode::OK).then(|| {
        body["runs"][0]["state"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    })
}

async fn wait_for_state(service: &Service, id: &str, state: &str) {
    eventually(&format!("run {id} {state}"), WAIT, || async {
        run_state(service, id).await.as_deref() == Some(state)
    })
    .await;
}

/// The text after `before` in `text`, up to the next space or period.
fn word_after(text: &str, before: &str) -> String {
    let start = text
        .find(before)
        .unwrap_or_else(|| panic!("{before:?} in {text:?}"))
        + before.len();
    text[start..]
        .chars()
        .take_while(|c| !c.is_whitespace() && *c != '.' && *c != ')')
        .collect()
}

async fn every_page_loads_without_console_errors(broker: Broker, name: &str) {
    let receiver = Receiver::start().await;
    let service = open_console(&broker, &receiver).await;
    let failed = enqueue(&service, "orders", json!({"n": 1, "customer": "ada"})).await;
    let handled = enqueue(&service, "events", json!({"n": 2})).await;
    eventually("the failed message in the DLQ", WAIT, || async {
        service.dlq_count("orders").await == 1
    })
    .await;
    wait_for_state(&service, &handled, "succeeded").await;
    let base = &service.api;
    let pages = [
        ("overview", "/console".to_owned(), "Overview"),
        (
            "trigger",
            "/console/triggers/charge".to_owned(),
            "Trigger charge",
        ),
        (
            "dlq",
            "/console/dlq?trigger=charge".to_owned(),
            "Dead letters",
        ),
        ("runs", "/console/runs".to_owned(), "Runs"),
        ("run", format!("/console/runs/{failed}"), "Run "),
        ("schedules", "/console/schedules".to_owned(), "Schedules"),
        (
            "enqueue",
            "/console/enqueue".to_owned(),
            "Enqueue a message",
        ),
        (
            "search",
            "/console/search?q=ada".to_owned(),
            "Find a message",
        ),
    ];
    let wide = Browser::start(1280).await;
    for (page, path, title) in &pages {
        wide.open(&format!("{base}{path}")).await;
        let heading = wide.text("h1").await;
        assert!(heading.starts_with(title), "{page}: {heading}");
        let errors = wide.console_errors().await;
        assert!(errors.is_empty(), "{page}: console errors {errors:?}");
        let source = wide.client.source().await.unwrap();
        for secret in [URL_SECRET, HEADER_SECRET] {
            assert!(
                !source.contains(secret),
                "{page} shows a secret of the config"
            );
        }
        wide.screenshot(&format!("{name}-{page}")).await;
    }
    // What each page shows of the seeded messages.
    wide.open(&format!("{base}/console/search?q=ada")).await;
    assert!(wide.text("main").await.contains(&failed));
    wide.open(&format!("{base}/console")).await;
    let table = wide.text("#overview").await;
    assert!(table.contains("charge") && table.contains("log"), "{table}");
    assert!(
        wide.has("#overview td.bad").await,
        "the failure of the last minute is shown"
    );
    // The overview refreshes itself without an error.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    wide.assert_no_console_errors().await;
    let narrow = Browser::start(375).await;
    for (page, path, _) in &pages {
        narrow.open(&format!("{base}{path}")).await;
        assert!(narrow.fits_width().await, "{page} is wider than 375 px");
        narrow.assert_no_console_errors().await;
    }
    narrow.open(&format!("{base}/console/runs/{failed}")).await;
    narrow.screenshot(&format!("{name}-run-375px")).await;
}

async fn redrive_and_purge_from_the_page(broker: Broker, name: &str) {
    let receiver = Receiver::start().await;
    let service = open_console(&broker, &receiver).await;
    let purged = enqueue(&service, "orders", json!({"n": 1})).await;
    eventually("the first record", WAIT, || async {
        service.dlq_count("orders").await == 1
    })
    .await;
    // Every record matching a filter, purged after the count is shown.
    let browser = Browser::start(1280).await;
    browser
        .open(&format!(
            "{}/console/dlq?trigger=charge&error=switched",
            service.api
        ))
        .await;
    browser.click("input[name=scope][value=matching]").await;
    browser.click("#purge").await;
    let question = browser.text("#question").await;
    assert_eq!(question, "Purge 1 matching record of orders / charge?");
    // A record dead-lettered after the count was shown is not touched.
    let redriven = enqueue(&service, "orders", json!({"n": 2})).await;
    eventually("the second record", WAIT, || async {
        service.dlq_count("orders").await == 2
    })
    .await;
    browser.click("#confirm").await;
    browser
        .wait_for_text("#job", "Done: 1 record changed")
        .await;
    let left = service.dlq_records("orders").await;
    assert_eq!(left.len(), 1);
    assert_eq!(left[0]["id"], redriven.as_str());
    assert_eq!(
        run_state(&service, &purged).await.as_deref(),
        Some("dead_lettered")
    );
    // The ticked record, redriven once its endpoint works: delivered.
    receiver.switch_on();
    browser
        .open(&format!("{}/console/dlq?trigger=charge", service.api))
        .await;
    browser
        .click(&format!("input[name=ids][value=\"{redriven}\"]"))
        .await;
    browser.click("#redrive").await;
    let question = browser.text("#question").await;
    assert_eq!(question, "Redrive 1 selected record of orders / charge?");
    browser.screenshot(&format!("{name}-confirm")).await;
    browser.click("#confirm").await;
    browser
        .wait_for_text("#job", "Done: 1 record changed")
        .await;
    browser.screenshot(&format!("{name}-job")).await;
    wait_for_state(&service, &redriven, "succeeded").await;
    let delivered = receiver
        .requests("switch")
        .iter()
        .filter(|request| request.body["id"] == redriven.as_str())
        .count();
    assert_eq!(delivered, 2, "failed once, then delivered by the redrive");
    assert_eq!(service.dlq_count("orders").await, 0);
    browser.assert_no_console_errors().await;
}

async fn cancel_and_replay_a_run(broker: Broker, _name: &str) {
    let receiver = Receiver::start().await;
    let service = open_console(&broker, &receiver).await;
    let later = service
        .ok(
            "queue.enqueue",
            json!({"topic": "events", "data": {"n": 3}, "delay": "1h"}),
        )
        .await["message_id"]
        .as_str()
        .unwrap()
        .to_owned();
    wait_for_state(&service, &later, "delayed").await;
    let browser = Browser::start(1280).await;
    browser
        .open(&format!("{}/console/runs/{later}", service.api))
        .await;
    browser.click("form[action$='/cancel'] button").await;
    browser
        .wait_for_text(".flash.ok", "Cancel asked for on log")
        .await;
    wait_for_state(&service, &later, "cancelled").await;
    // A finished run replays, its data edited; text that is not JSON is caught first.
    browser
        .open(&format!("{}/console/runs/{later}", service.api))
        .await;
    browser.fill("textarea[name=data]", "{\"n\": 4,").await;
    browser.click("form.replay button").await;
    let error = browser.text("form.replay .field-error").await;
    assert!(error.starts_with("Not JSON yet"), "{error}");
    assert_eq!(browser.path().await, format!("/console/runs/{later}"));
    browser
        .fill("textarea[name=data]", "{\"n\": 4, \"replayed\": true}")
        .await;
    browser.click("form.replay button").await;
    browser.wait_for_text(".flash.ok", "Replayed on log").await;
    let path = browser.path().await;
    let replay = path.trim_start_matches("/console/runs/").to_owned();
    assert_ne!(replay, later);
    wait_for_state(&service, &replay, "succeeded").await;
    let runs = service.ok("queue.run_get", json!({"id": replay})).await;
    assert_eq!(runs["runs"][0]["data"], json!({"n": 4, "replayed": true}));
    assert_eq!(runs["runs"][0]["replay_of"], later.as_str());
    browser.assert_no_console_errors().await;
}

async fn pause_a_trigger_and_see_it_stop(broker: Broker, _name: &str) {
    let receiver = Receiver::start().await;
    let service = open_console(&broker, &receiver).await;
    let browser = Browser::start(1280).await;
    browser
        .open(&format!("{}/console/triggers/log", service.api))
        .await;
    // By keyboard: Enter on the focused button.
    browser.find("#pause").await.send_keys(ENTER).await.unwrap();
    browser.wait_for_text(".flash.ok", "Paused log").await;
    assert_eq!(browser.text("#trigger-state").await, "paused");
    let listed = service.ok("queue.trigger_list", json!({})).await;
    let log = listed["triggers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|trigger| trigger["trigger"] == "log")
        .unwrap()
        .clone();
    assert_eq!(log["paused"], true);
    // A pause reaches the trigger within a second.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let held = enqueue(&service, "events", json!({"n": 5})).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(run_state(&service, &held).await.as_deref(), Some("queued"));
    browser.click("#resume").await;
    browser.wait_for_text(".flash.ok", "Resumed log").await;
    assert_eq!(browser.text("#trigger-state").await, "running");
    wait_for_state(&service, &held, "succeeded").await;
    browser.assert_no_console_errors().await;
}

async fn fire_a_schedule_now(broker: Broker, _name: &str) {
    let receiver = Receiver::start().await;
    let service = open_console(&broker, &receiver).await;
    // Without a token, a page of a site whose name was rebound to 127.0.0.1 gets nothing.
    let rebound = raw_client()
        .get(format!("{}/console/schedules", service.api))
        .header("host", "rebound.example")
        .send()
        .await
        .unwrap();
    assert_eq!(rebound.status(), StatusCode::FORBIDDEN);
    let browser = Browser::start(1280).await;
    browser
        .open(&format!("{}/console/schedules", service.api))
        .await;
    assert!(browser.text("#schedule-beat").await.contains("every 1h"));
    browser
        .click("#schedule-beat form[action$='/fire'] button")
        .await;
    let flash = browser
        .wait_for_text(".flash.ok", "Fired schedule beat now")
        .await;
    let fired = word_after(&flash, "message ");
    wait_for_state(&service, &fired, "succeeded").await;
    let runs = service.ok("queue.run_get", json!({"id": fired})).await;
    assert_eq!(runs["runs"][0]["data"], json!({"beat": true}));
    browser.assert_no_console_errors().await;
}

async fn enqueue_from_the_form(broker: Broker, _name: &str) {
    let receiver = Receiver::start().await;
    let service = open_console(&broker, &receiver).await;
    let browser = Browser::start(1280).await;
    browser
        .open(&format!("{}/console/enqueue", service.api))
        .await;
    browser.click("#e-topic option[value=events]").await;
    browser.fill("#e-data", "{\"n\": 6").await;
    browser.click("#enqueue").await;
    let error = browser.text("#e-data-error").await;
    assert!(error.starts_with("Not JSON yet"), "{error}");
    browser
        .fill("#e-data", "{\"n\": 6, \"from\": \"console\"}")
        .await;
    browser.fill("#e-key", "console-key-1").await;
    browser.click("#enqueue").await;
    let flash = browser.wait_for_text(".flash.ok", "Enqueued message").await;
    assert!(flash.ends_with("to events."), "{flash}");
    let id = word_after(&flash, "message ");
    wait_for_state(&service, &id, "succeeded").await;
    let runs = service.ok("queue.run_get", json!({"id": id})).await;
    assert_eq!(runs["runs"][0]["data"], json!({"n": 6, "from": "console"}));
    assert_eq!(runs["runs"][0]["idempotency_key"], "console-key-1");
    assert_eq!(browser.text("#last-run code").await, id);
    // Found by its idempotency key, across runs and dead letters.
    browser
        .open(&format!("{}/console/search?q=console-key-1", service.api))
        .await;
    assert!(browser.text("main").await.contains(&id));
    browser
        .open(&format!("{}/console/enqueue", service.api))
        .await;
    // The same key again: the first message's id, nothing enqueued.
    browser.click("#e-topic option[value=events]").await;
    browser.fill("#e-data", "{\"n\": 7}").await;
    browser.fill("#e-key", "console-key-1").await;
    browser.click("#enqueue").await;
    let flash = browser.wait_for_text(".flash.ok", "Not enqueued").await;
    assert!(flash.contains(&id), "{flash}");
    browser.assert_no_console_errors().await;
}

const FORM: &str = "application/x-www-form-urlencoded";

/// WebDriver's Enter key.
const ENTER: &str = "\u{e007}";

/// `pairs` as a form body.
fn form(pairs: &[(&str, &str)]) -> String {
    let encode = |text: &str| {
        text.chars()
            .map(|c| match c {
                'a'..='z' | 'A'..='Z' | '0'..='9' | '-' | '_' | '.' => c.to_string(),
                other => format!("%{:02X}", other as u32),
            })
            .collect::<String>()
    };
    pairs
        .iter()
        .map(|(key, value)| format!("{}={}", encode(key), encode(value)))
        .collect::<Vec<_>>()
        .join("&")
}

/// An HTTP client that does not follow redirects, as a forger's script would send.
fn raw_client() -> reqwest::Client {
    topiq_server::install_tls_provider();
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// Logs in with `token` and returns the session cookie and a page's CSRF token.
async fn session_of(http: &reqwest::Client, base: &str, token: &str) -> (String, String) {
    let answer = http
        .post(format!("{base}/console/login"))
        .header("content-type", FORM)
        .body(form(&[("token", token), ("next", "/console")]))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::SEE_OTHER);
    let cookie = answer
        .headers()
        .get("set-cookie")
        .unwrap()
        .to_str()
        .unwrap();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let session = cookie.split(';').next().unwrap().to_owned();
    let page = http
        .get(format!("{base}/console/schedules"))
        .header("cookie", &session)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let marker = "name=\"csrf\" value=\"";
    let start = page.find(marker).expect("a form with a CSRF token") + marker.len();
    let csrf: String = page[start..].chars().take_while(|c| *c != '"').collect();
    (session, csrf)
}

/// Posts the trigger page's pause form for `log` with `csrf`, from `origin`.
async fn pause_through_a_form(
    http: &reqwest::Client,
    base: &str,
    session: &str,
    csrf: &str,
    origin: &str,
) -> StatusCode {
    http.post(format!("{base}/console/triggers/log/pause"))
        .header("cookie", session)
        .header("origin", origin)
        .header("content-type", FORM)
        .body(form(&[("csrf", csrf)]))
        .send()
        .await
        .unwrap()
        .status()
}

async fn login_csrf_and_read_only(broker: Broker, name: &str) {
    let receiver = Receiver::start().await;
    let token_api = "token: ${TEST_API_TOKEN}";
    let service = start(&broker, &receiver, token_api, "enabled: true").await;
    let base = service.api.clone();
    let browser = Browser::start(1280).await;
    browser.open(&format!("{base}/console/triggers/log")).await;
    assert!(
        browser.path().await.starts_with("/console/login"),
        "{}",
        browser.path().await
    );
    browser.screenshot(&format!("{name}-login")).await;
    browser.fill("#token", "not-the-token").await;
    browser.click("form button").await;
    browser
        .wait_for_text(".flash.error", "not the API's token")
        .await;
    browser.fill("#token", TOKEN).await;
    browser.click("form button").await;
    browser.wait_for_text("h1", "Trigger log").await;
    browser.assert_no_console_errors().await;
    // Actions need the session's CSRF token and the console's own origin.
    let http = raw_client();
    let (session, csrf) = session_of(&http, &base, TOKEN).await;
    let stale = pause_through_a_form(&http, &base, &session, &"0".repeat(64), &base).await;
    assert_eq!(stale, StatusCode::FORBIDDEN);
    let elsewhere =
        pause_through_a_form(&http, &base, &session, &csrf, "http://evil.example").await;
    assert_eq!(elsewhere, StatusCode::FORBIDDEN);
    let paused = service.ok("queue.trigger_list", json!({})).await;
    assert!(!paused.to_string().contains("\"paused\":true"), "{paused}");
    // An action on a trigger the config does not have is refused, not widened to a topic.
    let unknown = http
        .post(format!("{base}/console/dlq/confirm"))
        .header("cookie", &session)
        .header("content-type", FORM)
        .body(form(&[
            ("csrf", &csrf),
            ("trigger", "nope"),
            ("op", "purge"),
            ("scope", "matching"),
        ]))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), StatusCode::SEE_OTHER);
    let flash = unknown.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(flash.contains("no%20trigger%20%22nope%22"), "{flash}");
    assert_eq!(service.dlq_count("orders").await, 0);
    let allowed = pause_through_a_form(&http, &base, &session, &csrf, &base).await;
    assert_eq!(allowed, StatusCode::SEE_OTHER);
    let paused = service.ok("queue.trigger_list", json!({})).await;
    assert!(paused.to_string().contains("\"paused\":true"), "{paused}");
    drop(browser);
    drop(service);

    // Read-only: everything shown, every action refused by the server.
    let service = start(
        &broker,
        &receiver,
        token_api,
        "{ enabled: true, read_only: true }",
    )
    .await;
    let base = service.api.clone();
    let done = enqueue(&service, "events", json!({"n": 9})).await;
    wait_for_state(&service, &done, "succeeded").await;
    let browser = Browser::start(1280).await;
    browser.open(&format!("{base}/console/login")).await;
    browser.fill("#token", &format!("{TOKEN}{ENTER}")).await;
    browser.wait_for_text(".top .badge", "read-only").await;
    assert!(!browser.client.source().await.unwrap().contains(TOKEN));
    browser.open(&format!("{base}/console/triggers/log")).await;
    assert!(!browser.has("#pause").await);
    browser.open(&format!("{base}/console/runs/{done}")).await;
    assert!(!browser.has("form.replay").await);
    browser.assert_no_console_errors().await;
    // Logging out is no change to the queue: allowed when read-only.
    browser.click(".logout button").await;
    browser.find("#token").await;
    assert!(browser.path().await.starts_with("/console/login"));
    let (session, csrf) = session_of(&http, &base, TOKEN).await;
    let refused = http
        .post(format!("{base}/console/triggers/log/pause"))
        .header("cookie", &session)
        .header("content-type", FORM)
        .body(form(&[("csrf", &csrf)]))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    assert!(refused.text().await.unwrap().contains("read-only"));
    let listed = service.ok("queue.trigger_list", json!({})).await;
    assert!(!listed.to_string().contains("\"paused\":true"), "{listed}");
}
