//! Placeholder until the validation branch lands.
pub fn json_schema() -> serde_json::Value {
    serde_json::to_value(schemars::schema_for!(super::Experiment)).expect("schema")
}
