//! Trigger conditions: CEL expressions over the message, compiled once at startup.
//!
//! Variables: `data` (the payload), `topic`, `id`, `attempt`, `max_attempts`, `enqueued_at`
//! (RFC 3339 text) and `idempotency_key` (`null` when absent). JSON integers are CEL `int`,
//! other numbers `double`, so `data.count > 5` and `data.price < 9.5` both work.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use cel::objects::{Key, Map};
use cel::{Context, Program, Value as CelValue};
use serde_json::Value;
use topiq_adapter::Envelope;

/// The variables a condition may use.
pub const CONDITION_VARIABLES: &[&str] = &[
    "data",
    "topic",
    "id",
    "attempt",
    "max_attempts",
    "enqueued_at",
    "idempotency_key",
];

/// A compiled condition.
#[derive(Clone)]
pub struct Condition {
    source: Arc<str>,
    program: Arc<Program>,
}

impl fmt::Debug for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Condition").field(&self.source).finish()
    }
}

impl Condition {
    /// Compiles `source`; the error says what is wrong with it.
    pub fn compile(source: &str) -> Result<Self, String> {
        let program =
            compile_cel(source, CONDITION_VARIABLES).map_err(|problem| match problem {
                CelProblem::Invalid(err) => {
                    format!("the condition is not a valid CEL expression: {err}")
                }
                CelProblem::Unknown(name) => format!(
                    "the condition uses the unknown variable `{name}`; known: {}",
                    CONDITION_VARIABLES.join(", ")
                ),
            })?;
        Ok(Self {
            source: source.into(),
            program: Arc::new(program),
        })
    }

    /// The expression as written.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// True when the message passes; an error when the expression fails or is not boolean.
    pub fn evaluate(&self, envelope: &Envelope) -> Result<bool, String> {
        let mut context = Context::default();
        context.add_variable_from_value("data", json_to_cel(&envelope.data));
        context.add_variable_from_value("topic", envelope.topic.as_str().to_owned());
        context.add_variable_from_value("id", envelope.id.as_str().to_owned());
        context.add_variable_from_value("attempt", i64::from(envelope.attempt));
        context.add_variable_from_value("max_attempts", i64::from(envelope.max_attempts));
        context.add_variable_from_value("enqueued_at", envelope.enqueued_at.to_string());
        context.add_variable_from_value(
            "idempotency_key",
            match &envelope.idempotency_key {
                Some(key) => CelValue::String(Arc::new(key.clone())),
                None => CelValue::Null,
            },
        );
        match self.program.execute(&context) {
            Ok(CelValue::Bool(passes)) => Ok(passes),
            Ok(other) => Err(format!("the condition returned {other:?}, not a boolean")),
            Err(err) => Err(format!("the condition failed: {err}")),
        }
    }
}

/// Why a CEL expression was refused.
pub(crate) enum CelProblem {
    /// It does not parse, with the parser's error.
    Invalid(String),
    /// It uses a variable it may not, this one.
    Unknown(String),
}

/// Compiles `source`, which may use only `variables`.
pub(crate) fn compile_cel(source: &str, variables: &[&str]) -> Result<Program, CelProblem> {
    let program = Program::compile(source).map_err(|err| CelProblem::Invalid(err.to_string()))?;
    if let Some(unknown) = program
        .references()
        .variables()
        .into_iter()
        .find(|name| !variables.contains(name))
    {
        return Err(CelProblem::Unknown(unknown.to_owned()));
    }
    Ok(program)
}

/// A JSON value as CEL sees it.
pub(crate) fn json_to_cel(value: &Value) -> CelValue {
    match value {
        Value::Null => CelValue::Null,
        Value::Bool(flag) => CelValue::Bool(*flag),
        Value::Number(number) => match number.as_i64() {
            Some(int) => CelValue::Int(int),
            None => match number.as_u64() {
                Some(uint) => CelValue::UInt(uint),
                None => CelValue::Float(number.as_f64().unwrap_or(f64::NAN)),
            },
        },
        Value::String(text) => CelValue::String(Arc::new(text.clone())),
        Value::Array(items) => CelValue::List(Arc::new(items.iter().map(json_to_cel).collect())),
        Value::Object(fields) => {
            let map: HashMap<Key, CelValue> = fields
                .iter()
                .map(|(key, value)| (Key::String(Arc::new(key.clone())), json_to_cel(value)))
                .collect();
            CelValue::Map(Map { map: Arc::new(map) })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn envelope(data: Value) -> Envelope {
        crate::testing::envelope("emails.send", data)
    }

    #[test]
    fn conditions_see_data_topic_and_attempt() {
        let condition = Condition::compile(
            r#"data.priority == "high" && topic == "emails.send" && attempt == 1"#,
        )
        .unwrap();
        assert!(
            condition
                .evaluate(&envelope(json!({"priority": "high"})))
                .unwrap()
        );
        assert!(
            !condition
                .evaluate(&envelope(json!({"priority": "low"})))
                .unwrap()
        );
    }

    #[test]
    fn json_integers_compare_with_cel_ints_and_doubles() {
        let condition = Condition::compile("data.count + 1 > 5 && data.price < 9.5").unwrap();
        assert!(
            condition
                .evaluate(&envelope(json!({"count": 5, "price": 9.0})))
                .unwrap()
        );
    }

    #[test]
    fn a_missing_field_is_an_error_not_a_pass() {
        let condition = Condition::compile(r#"data.priority == "high""#).unwrap();
        assert!(condition.evaluate(&envelope(json!({}))).is_err());
    }

    #[test]
    fn non_boolean_results_are_errors() {
        let condition = Condition::compile("data.count").unwrap();
        let err = condition
            .evaluate(&envelope(json!({"count": 1})))
            .unwrap_err();
        assert!(err.contains("not a boolean"), "{err}");
    }

    #[test]
    fn syntax_errors_and_unknown_variables_fail_to_compile() {
        assert!(
            Condition::compile("data.priority ==")
                .unwrap_err()
                .contains("CEL")
        );
        let err = Condition::compile("payload.priority == 1").unwrap_err();
        assert!(err.contains("`payload`"), "{err}");
    }
}
