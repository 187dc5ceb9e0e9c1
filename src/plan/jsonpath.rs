//! The small JSON path subset probes need: `$`, `.key`, `['key']`, `["key"]` and `[index]`.

use serde_json::Value;

#[derive(Clone, Debug, PartialEq)]
enum Segment {
    Key(String),
    Index(usize),
}

#[derive(Clone, Debug, PartialEq)]
pub struct JsonPath {
    segments: Vec<Segment>,
}

impl JsonPath {
    pub fn parse(path: &str) -> Result<JsonPath, String> {
        let rest = path.strip_prefix('$').ok_or_else(|| {
            format!("JSON path `{path}` must start with `$` (for example `$.status`)")
        })?;
        let mut segments = Vec::new();
        let chars: Vec<char> = rest.chars().collect();
        let mut i = 0;
        while i < chars.len() {
            match chars[i] {
                '.' => {
                    let start = i + 1;
                    let mut end = start;
                    while end < chars.len() && chars[end] != '.' && chars[end] != '[' {
                        end += 1;
                    }
                    if end == start {
                        return Err(format!(
                            "JSON path `{path}` has an empty key at offset {}",
                            i + 1
                        ));
                    }
                    segments.push(Segment::Key(chars[start..end].iter().collect()));
                    i = end;
                }
                '[' => {
                    let close = chars[i..]
                        .iter()
                        .position(|&c| c == ']')
                        .map(|p| p + i)
                        .ok_or_else(|| format!("JSON path `{path}` has an unclosed `[`"))?;
                    let inner: String = chars[i + 1..close].iter().collect();
                    let inner = inner.trim();
                    let quoted = (inner.starts_with('\'') && inner.ends_with('\''))
                        || (inner.starts_with('"') && inner.ends_with('"'));
                    if quoted && inner.len() >= 2 {
                        segments.push(Segment::Key(inner[1..inner.len() - 1].to_string()));
                    } else {
                        let index = inner.parse::<usize>().map_err(|_| {
                            format!("JSON path `{path}`: `[{inner}]` is neither an index nor a quoted key")
                        })?;
                        segments.push(Segment::Index(index));
                    }
                    i = close + 1;
                }
                c => {
                    return Err(format!(
                        "JSON path `{path}`: unexpected `{c}` at offset {}; use `.key` or `[index]`",
                        i + 1
                    ));
                }
            }
        }
        Ok(JsonPath { segments })
    }

    /// The value at this path, if every step exists.
    pub fn find<'a>(&self, mut value: &'a Value) -> Option<&'a Value> {
        for segment in &self.segments {
            value = match segment {
                Segment::Key(key) => value.get(key.as_str())?,
                Segment::Index(index) => value.get(*index)?,
            };
        }
        Some(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn finds_nested_values() {
        let doc = json!({"a": {"b": [10, {"c": "x"}]}, "we ird": true});
        assert_eq!(JsonPath::parse("$").unwrap().find(&doc), Some(&doc));
        assert_eq!(
            JsonPath::parse("$.a.b[0]").unwrap().find(&doc),
            Some(&json!(10))
        );
        assert_eq!(
            JsonPath::parse("$.a.b[1].c").unwrap().find(&doc),
            Some(&json!("x"))
        );
        assert_eq!(
            JsonPath::parse("$['we ird']").unwrap().find(&doc),
            Some(&json!(true))
        );
        assert_eq!(JsonPath::parse("$.a.missing").unwrap().find(&doc), None);
    }

    #[test]
    fn rejects_malformed_paths() {
        for bad in ["a.b", "$.", "$[x]", "$.a[0", "$a"] {
            assert!(JsonPath::parse(bad).is_err(), "{bad} should be rejected");
        }
    }
}
