//! Decoding a method's `params` into its typed parameters.
//!
//! Errors name the field (`params.size: expected a size like "1G" or a number of bytes`), so
//! a user sees at once what to fix, over the wire as in a configuration file.

use serde::de::DeserializeOwned;
use serde_json::Value;

/// Why `params` do not fit a method.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.describe())]
pub struct ParamsError {
    /// The path of the offending field below `params` (`size`, `faults.ops[1]`), empty when
    /// the problem is with `params` as a whole (missing field, unknown field, not an object).
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl ParamsError {
    fn describe(&self) -> String {
        if self.field.is_empty() {
            format!("params: {}", self.message)
        } else {
            format!("params.{}: {}", self.field, self.message)
        }
    }
}

/// Decodes `params` (absent params are taken as `{}`) into `T`.
pub fn parse_params<T: DeserializeOwned>(params: Value) -> Result<T, ParamsError> {
    let params = match params {
        Value::Null => Value::Object(Default::default()),
        Value::Object(m) => Value::Object(m),
        Value::Array(_) => {
            return Err(ParamsError {
                field: String::new(),
                message: "expected an object of named parameters, got an array".into(),
            })
        }
        other => {
            return Err(ParamsError {
                field: String::new(),
                message: format!("expected an object of named parameters, got {other}"),
            })
        }
    };
    serde_path_to_error::deserialize(params).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." { String::new() } else { path };
        ParamsError {
            field,
            message: e.into_inner().to_string(),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Size;
    use serde::Deserialize;
    use serde_json::json;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct P {
        name: String,
        size: Size,
        #[serde(default)]
        force: bool,
    }

    #[test]
    fn names_the_field_with_the_wrong_type() {
        let e = parse_params::<P>(json!({"name": "m0", "size": true})).unwrap_err();
        assert_eq!(e.field, "size");
        assert_eq!(
            e.to_string(),
            "params.size: invalid type: boolean `true`, expected a size like \"1G\" or a number of bytes"
        );
        let e = parse_params::<P>(json!({"name": 5, "size": 1})).unwrap_err();
        assert_eq!(
            e.to_string(),
            "params.name: invalid type: integer `5`, expected a string"
        );
        let e = parse_params::<P>(json!({"name": "a", "size": "1X"})).unwrap_err();
        assert_eq!(
            e.to_string(),
            "params.size: expected a size like \"1G\" or a number of bytes, got \"1X\""
        );
    }

    #[test]
    fn reports_unknown_and_missing_fields() {
        let e = parse_params::<P>(json!({"name": "m0", "sise": 1})).unwrap_err();
        assert!(e.message.starts_with("unknown field `sise`"), "{e}");
        let e = parse_params::<P>(json!({"name": "m0"})).unwrap_err();
        assert_eq!(e.to_string(), "params: missing field `size`");
        let e = parse_params::<P>(json!(["m0", 1])).unwrap_err();
        assert!(e.to_string().contains("expected an object"), "{e}");
    }

    #[test]
    fn decodes_good_params() {
        let p = parse_params::<P>(json!({"name": "m0", "size": "1G", "force": true})).unwrap();
        assert_eq!(
            (p.name.as_str(), p.size, p.force),
            ("m0", Size(1 << 30), true)
        );
    }
}
