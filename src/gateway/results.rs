//! What the Gateway's tools answer: OpenCode's JSON as text, or `isError` with the Node tool's
//! `Error executing <tool>: <message>`; the assistant's text of a finished turn, and a provider
//! failure OpenCode reported with HTTP 200. Also which ids may go into a URL path. Pure.

use rmcp::model::{CallToolResult, ContentBlock};
use serde_json::Value;

/// IDs go into URL paths, so only OpenCode's ID alphabet is accepted.
pub(super) fn checked_id(id: &str) -> Option<&str> {
    (id.len() > 4
        && id.len() <= 128
        && id.as_bytes()[3] == b'_'
        && id[..3].chars().all(|c| c.is_ascii_lowercase())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'))
    .then_some(id)
}

/// A provider failure that OpenCode returned with HTTP 200 (`info.error`).
pub(super) fn turn_error(answer: &Value) -> Option<String> {
    let error = answer.get("info")?.get("error")?;
    let name = error.get("name").and_then(Value::as_str).unwrap_or("error");
    let message = error
        .get("data")
        .and_then(|d| d.get("message"))
        .and_then(Value::as_str)
        .unwrap_or("no message");
    Some(match name {
        "MessageAbortedError" => "the turn was aborted before it finished".to_owned(),
        _ => format!("the model provider failed the turn: {name}: {message}"),
    })
}

pub(super) fn assistant_text(answer: &Value) -> String {
    answer
        .get("parts")
        .and_then(Value::as_array)
        .map(|parts| {
            parts
                .iter()
                .filter(|p| p.get("type").and_then(Value::as_str) == Some("text"))
                .filter_map(|p| p.get("text").and_then(Value::as_str))
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_default()
}

pub(super) fn json_result(value: Value) -> CallToolResult {
    let text = json_text(&value);
    let mut result = CallToolResult::success(vec![ContentBlock::text(text)]);
    if value.is_object() {
        result.structured_content = Some(value);
    }
    result
}

/// OpenCode's JSON as the text of a result.
pub(super) fn json_text(value: &Value) -> String {
    serde_json::to_string_pretty(value).unwrap_or_default()
}

pub(super) fn text_result(text: String) -> CallToolResult {
    CallToolResult::success(vec![ContentBlock::text(text)])
}

pub(super) fn fail(tool: &str, message: &str) -> CallToolResult {
    CallToolResult::error(vec![ContentBlock::text(format!(
        "Error executing {tool}: {message}"
    ))])
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ids_that_could_change_the_path_are_refused() {
        assert_eq!(checked_id("ses_abc123"), Some("ses_abc123"));
        assert_eq!(checked_id("per_X-1"), Some("per_X-1"));
        for bad in [
            "", "abc", "../x", "a/b", "ses_a?b", "ses_a b", "%2e", "ses_",
        ] {
            assert_eq!(checked_id(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_provider_failure_in_a_200_answer_is_found() {
        let answer = json!({"info": {"error": {"name": "APIError", "data": {"message": "Incorrect API key provided"}}}, "parts": []});
        assert_eq!(
            turn_error(&answer).as_deref(),
            Some("the model provider failed the turn: APIError: Incorrect API key provided")
        );
        let ok =
            json!({"info": {}, "parts": [{"type": "text", "text": "hi"}, {"type": "step-finish"}]});
        assert_eq!(turn_error(&ok), None);
        assert_eq!(assistant_text(&ok), "hi");
    }
}
