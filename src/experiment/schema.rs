//! The JSON Schema of the experiment file, for editors (YAML language servers) and CI linting.
//! Generated from the same serde types that parse the file, so it cannot drift from them.

use super::model::{API_VERSION, Experiment};

/// Where the schema says it lives; a URN because it is published with the binary, not on a server.
pub const SCHEMA_ID: &str = "urn:faultline:schema:experiment:v1";

pub fn json_schema() -> serde_json::Value {
    let mut schema = serde_json::to_value(schemars::schema_for!(Experiment))
        .expect("a generated schema is plain JSON");
    if let Some(object) = schema.as_object_mut() {
        object.insert("$id".into(), SCHEMA_ID.into());
        object.insert(
            "title".into(),
            format!("faultline experiment ({API_VERSION})").into(),
        );
    }
    schema
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str =
        "apiVersion: faultline/v1\nmetadata: {name: schema-test}\nmax_duration: 1m\n";

    #[test]
    fn schema_describes_every_top_level_key() {
        let schema = json_schema();
        let properties = schema["properties"]
            .as_object()
            .expect("schema has properties");
        // Serialising an experiment writes every top-level field, so the schema is checked
        // against the real set of keys rather than a hand-kept list.
        let experiment: Experiment = serde_saphyr::from_str(MINIMAL).unwrap();
        let written = serde_json::to_value(&experiment).unwrap();
        let keys = written.as_object().unwrap();
        assert!(keys.len() >= 10, "{keys:?}");
        for key in keys.keys() {
            assert!(properties.contains_key(key), "schema lacks `{key}`");
        }
        let required: Vec<&str> = schema["required"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|v| v.as_str())
            .collect();
        for key in ["apiVersion", "metadata", "max_duration"] {
            assert!(
                required.contains(&key),
                "`{key}` should be required: {required:?}"
            );
        }
        assert_eq!(schema["$id"], SCHEMA_ID);
        assert_eq!(schema["title"], "faultline experiment (faultline/v1)");
    }

    #[test]
    fn schema_is_valid_json_with_resolvable_references() {
        let text = serde_json::to_string_pretty(&json_schema()).unwrap();
        let schema: serde_json::Value = serde_json::from_str(&text).unwrap();
        let definitions = schema["$defs"].as_object().expect("schema has $defs");
        for reference in text
            .match_indices("\"$ref\": \"#/$defs/")
            .map(|(i, _)| &text[i + 17..])
        {
            let name = &reference[..reference.find('"').unwrap()];
            assert!(
                definitions.contains_key(name),
                "dangling reference to `{name}`"
            );
        }
        assert!(text.contains("process-kill"), "fault kinds are listed");
        let probe_kinds = definitions["ProbeDef"]["properties"]
            .as_object()
            .expect("probes have properties");
        for kind in ["http", "tcp", "command", "process", "prometheus"] {
            assert!(
                probe_kinds.contains_key(kind),
                "schema lacks probe kind `{kind}`"
            );
        }
        let prometheus = &definitions["PrometheusProbe"];
        assert_eq!(prometheus["required"], serde_json::json!(["url", "query"]));
    }
}
