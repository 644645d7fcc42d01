//! The JSON-RPC 2.0 envelope and gyred's error codes.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Error codes: the standard ones from the JSON-RPC 2.0 specification, then gyred's own
/// application errors (in the range the specification reserves for servers).
pub mod codes {
    /// The request is not valid JSON.
    pub const PARSE_ERROR: i64 = -32700;
    /// Valid JSON, but not a JSON-RPC 2.0 request object.
    pub const INVALID_REQUEST: i64 = -32600;
    pub const METHOD_NOT_FOUND: i64 = -32601;
    /// A parameter is missing, unknown, or of the wrong type or value.
    pub const INVALID_PARAMS: i64 = -32602;
    pub const INTERNAL_ERROR: i64 = -32603;
    /// The named object does not exist.
    pub const NOT_FOUND: i64 = -32001;
    /// An object of that name already exists.
    pub const ALREADY_EXISTS: i64 = -32002;
    /// The object is in use (open by a protocol, or the base of a virtual bdev).
    pub const IN_USE: i64 = -32003;
    /// A configuration file (or a call in one) is invalid.
    pub const INVALID_CONFIG: i64 = -32004;
    /// The daemon is shutting down and takes no more requests.
    pub const SHUTTING_DOWN: i64 = -32005;
    /// The operation failed in the system (I/O error, memory, a reactor that did not answer).
    pub const OPERATION_FAILED: i64 = -32006;
}

/// A request id: a string, a number, or null. Absent in notifications.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Id {
    Number(serde_json::Number),
    String(String),
    Null,
}

impl Id {
    /// Reads an id from a request's `id` member; `None` if it is not a valid id type.
    pub fn from_value(v: &Value) -> Option<Id> {
        match v {
            Value::Null => Some(Id::Null),
            Value::Number(n) => Some(Id::Number(n.clone())),
            Value::String(s) => Some(Id::String(s.clone())),
            _ => None,
        }
    }
}

impl From<u64> for Id {
    fn from(n: u64) -> Self {
        Id::Number(n.into())
    }
}

/// A request as a client sends it.
#[derive(Debug, Clone, Serialize)]
pub struct Request<'a> {
    pub jsonrpc: &'static str,
    pub method: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub params: Option<&'a Value>,
    /// `None` makes it a notification (no response).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<Id>,
}

/// The error member of a response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error)]
#[error("{message} (code {code})")]
pub struct ErrorObject {
    pub code: i64,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
}

impl ErrorObject {
    pub fn new(code: i64, message: impl Into<String>) -> Self {
        ErrorObject {
            code,
            message: message.into(),
            data: None,
        }
    }

    pub fn with_data(mut self, data: Value) -> Self {
        self.data = Some(data);
        self
    }
}

/// A response. Exactly one of `result` and `error` is present.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response {
    pub jsonrpc: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorObject>,
    pub id: Id,
}

impl Response {
    pub fn success(id: Id, result: Value) -> Self {
        Response {
            jsonrpc: "2.0".into(),
            result: Some(result),
            error: None,
            id,
        }
    }

    pub fn failure(id: Id, error: ErrorObject) -> Self {
        Response {
            jsonrpc: "2.0".into(),
            result: None,
            error: Some(error),
            id,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn responses_have_the_spec_shape() {
        let ok = Response::success(Id::from(7), json!({"a": 1}));
        assert_eq!(
            serde_json::to_value(&ok).unwrap(),
            json!({"jsonrpc": "2.0", "result": {"a": 1}, "id": 7})
        );
        let err = Response::failure(Id::Null, ErrorObject::new(codes::PARSE_ERROR, "bad"));
        assert_eq!(
            serde_json::to_value(&err).unwrap(),
            json!({"jsonrpc": "2.0", "error": {"code": -32700, "message": "bad"}, "id": null})
        );
    }

    #[test]
    fn ids_keep_their_type() {
        assert_eq!(Id::from_value(&json!("x")), Some(Id::String("x".into())));
        assert_eq!(
            Id::from_value(&json!(1.5)).map(|i| serde_json::to_value(i).unwrap()),
            Some(json!(1.5))
        );
        assert_eq!(Id::from_value(&json!(null)), Some(Id::Null));
        assert_eq!(Id::from_value(&json!([1])), None);
        assert_eq!(Id::from_value(&json!({"a": 1})), None);
        assert_eq!(Id::from_value(&json!(true)), None);
    }
}
