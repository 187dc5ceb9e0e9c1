//! The experiment file's JSON Schema with each fault kind's own parameters: the model's
//! schema (one `params` object for all kinds) narrowed, per `kind`, to the keys that kind
//! takes, so an editor offers and accepts only those.

use serde_json::{Map, Value, json};

use crate::experiment::model::FaultKind;

pub fn json_schema() -> Value {
    let mut schema = crate::experiment::schema::json_schema();
    let defs = &mut schema["$defs"];
    let all_params = defs["FaultParams"]["properties"].clone();
    let kinds: Vec<String> = defs["FaultKind"]["oneOf"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|variant| variant["const"].as_str().map(str::to_string))
        .collect();
    let mut per_kind = Vec::new();
    for name in kinds {
        let Ok(kind) = serde_json::from_value::<FaultKind>(Value::String(name.clone())) else {
            continue;
        };
        let keys = crate::fault::module_kind(kind).map_or(&[][..], |module| module.keys);
        let properties: Map<String, Value> = keys
            .iter()
            .filter_map(|key| Some((key.to_string(), all_params.get(*key)?.clone())))
            .collect();
        per_kind.push(json!({
            "if": {"properties": {"kind": {"const": name}}, "required": ["kind"]},
            "then": {"properties": {"params": {
                "type": "object",
                "additionalProperties": false,
                "properties": properties,
            }}},
        }));
    }
    let fault = &mut defs["FaultDef"];
    fault["properties"]["params"] = json!({
        "type": "object",
        "default": {},
        "description": "The fault kind's parameters: each kind takes its own (see `kind`).",
    });
    fault["allOf"] = Value::Array(per_kind);
    schema
}

#[cfg(test)]
mod tests {
    use super::*;

    fn then_params(schema: &Value, kind: &str) -> Vec<String> {
        let branch = schema["$defs"]["FaultDef"]["allOf"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["if"]["properties"]["kind"]["const"] == kind)
            .unwrap_or_else(|| panic!("no branch for {kind}"));
        let params = &branch["then"]["properties"]["params"];
        assert_eq!(params["additionalProperties"], false);
        let mut keys: Vec<String> = params["properties"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        keys.sort();
        keys
    }

    #[test]
    fn each_kind_is_offered_only_its_own_params() {
        let schema = json_schema();
        assert_eq!(
            then_params(&schema, "network-reorder"),
            ["delay", "gap", "probability"]
        );
        assert_eq!(then_params(&schema, "process-kill"), ["signal"]);
        assert!(then_params(&schema, "process-stop").is_empty());
        let delay = then_params(&schema, "network-delay");
        assert!(delay.contains(&"jitter".to_string()), "{delay:?}");
        assert!(!delay.contains(&"load".to_string()), "{delay:?}");
        // Every kind has its branch, and each offered key keeps the model's description.
        let branches = schema["$defs"]["FaultDef"]["allOf"].as_array().unwrap();
        assert_eq!(branches.len(), 15);
        let branch = &branches[0]["then"]["properties"]["params"]["properties"]["signal"];
        assert!(branch["description"].as_str().unwrap().contains("SIGKILL"));
    }
}
