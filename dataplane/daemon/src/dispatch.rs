//! The JSON-RPC 2.0 layer: one decoded message (a request, a notification or a batch) in,
//! the response to send (if any) out.

use gyre_api::jsonrpc::Response;
use gyre_api::{codes, ErrorObject, Id};
use serde_json::Value;

use crate::core::Core;

/// Largest number of requests in one batch.
pub const MAX_BATCH: usize = 1024;

/// Handles one message; `None` when nothing is to be sent back (notifications only).
pub(crate) fn handle_message(core: &Core, msg: Value) -> Option<Value> {
    match msg {
        Value::Array(items) => {
            if items.is_empty() {
                return Some(error_response(
                    Id::Null,
                    ErrorObject::new(codes::INVALID_REQUEST, "empty batch"),
                ));
            }
            if items.len() > MAX_BATCH {
                return Some(error_response(
                    Id::Null,
                    ErrorObject::new(
                        codes::INVALID_REQUEST,
                        format!("batch of {} requests; at most {MAX_BATCH}", items.len()),
                    ),
                ));
            }
            let out: Vec<Value> = items
                .into_iter()
                .filter_map(|item| handle_one(core, item))
                .collect();
            (!out.is_empty()).then_some(Value::Array(out))
        }
        other => handle_one(core, other),
    }
}

fn error_response(id: Id, e: ErrorObject) -> Value {
    serde_json::to_value(Response::failure(id, e)).unwrap_or(Value::Null)
}

fn invalid(id: Id, why: impl Into<String>) -> Option<Value> {
    Some(error_response(
        id,
        ErrorObject::new(codes::INVALID_REQUEST, why),
    ))
}

fn handle_one(core: &Core, req: Value) -> Option<Value> {
    let Value::Object(mut obj) = req else {
        return invalid(Id::Null, "a request must be a JSON object");
    };
    // The id, if there is a usable one, is echoed even when the rest is invalid.
    let id = match obj.remove("id") {
        None => None,
        Some(v) => match Id::from_value(&v) {
            Some(id) => Some(id),
            None => return invalid(Id::Null, "id must be a string, a number or null"),
        },
    };
    let reply_id = id.clone().unwrap_or(Id::Null);
    match obj.remove("jsonrpc") {
        Some(Value::String(v)) if v == "2.0" => {}
        _ => return invalid(reply_id, "jsonrpc must be \"2.0\""),
    }
    let method = match obj.remove("method") {
        Some(Value::String(m)) => m,
        Some(_) => return invalid(reply_id, "method must be a string"),
        None => return invalid(reply_id, "method is missing"),
    };
    let params = obj.remove("params").unwrap_or(Value::Null);
    if let Some(extra) = obj.keys().next() {
        return invalid(reply_id, format!("unknown member '{extra}' in the request"));
    }
    if !matches!(params, Value::Object(_) | Value::Array(_) | Value::Null) {
        return invalid(reply_id, "params must be an object or an array");
    }
    let result = core.call(&method, params);
    // A notification gets no response, not even an error.
    let id = id?;
    let resp = match result {
        Ok(v) => Response::success(id, v),
        Err(e) => Response::failure(id, e.into()),
    };
    Some(serde_json::to_value(resp).unwrap_or(Value::Null))
}
