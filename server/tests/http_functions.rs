//! HTTP functions in an embedded module: registered by `topiq_server::register_http_functions`,
//! refused when the application registers the same name, and named in the error of a module
//! started without them.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::HashMap;

use topiq::{Config, Functions, Message, QueueModule};

fn config() -> Config {
    let text = "modules:
  - class: modules::queue::QueueModule
    config:
      adapter:
        class: modules::queue::BuiltinQueueAdapter
functions:
  emails.send:
    http:
      url: http://127.0.0.1:9/emails
triggers:
  send:
    type: queue
    function: emails.send
    config:
      topic: emails
";
    Config::from_yaml_with_variables(text, "test.yaml", &HashMap::new())
        .unwrap_or_else(|err| panic!("{err}"))
}

#[tokio::test]
async fn a_module_started_without_its_http_functions_says_how_to_register_them() {
    let err = QueueModule::new(config(), Functions::new())
        .await
        .err()
        .expect("the trigger's function is not registered");
    let message = err.to_string();
    assert!(message.contains("triggers.send.function"), "{message}");
    assert!(message.contains("register_http_functions"), "{message}");
}

#[tokio::test]
async fn registered_http_functions_start_the_module() {
    let config = config();
    let mut functions = Functions::new();
    topiq_server::register_http_functions(&config, &mut functions).unwrap();
    assert_eq!(functions.names(), ["emails.send"]);
    let module = QueueModule::new(config, functions).await.unwrap();
    module.close().await;
}

#[test]
fn an_http_function_the_application_registers_too_is_refused() {
    let mut functions = Functions::new();
    functions.register("emails.send", |_message: Message| async { Ok(()) });
    let err = topiq_server::register_http_functions(&config(), &mut functions).unwrap_err();
    let message = err.to_string();
    assert!(message.contains("functions.emails.send"), "{message}");
    assert!(message.contains("keep one of them"), "{message}");
}
