//! `POST /v1/moderations`: the full §7 result shape; an input is flagged (for violence) iff it
//! contains the word "kill".

use std::sync::Arc;

use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde_json::{Map, Value, json};

use super::fields;
use crate::error::ApiError;
use crate::gate::Call;

const DEFAULT_MODEL: &str = "omni-moderation-latest";

const CATEGORIES: &[&str] = &[
    "hate",
    "hate/threatening",
    "harassment",
    "harassment/threatening",
    "illicit",
    "illicit/violent",
    "self-harm",
    "self-harm/intent",
    "self-harm/instructions",
    "sexual",
    "sexual/minors",
    "violence",
    "violence/graphic",
];

/// Categories the omni model also scores on images.
const IMAGE_CATEGORIES: &[&str] = &[
    "self-harm",
    "self-harm/intent",
    "self-harm/instructions",
    "sexual",
    "violence",
    "violence/graphic",
];

/// One moderated input: its text and whether it carried an image.
struct Subject {
    text: String,
    has_image: bool,
}

fn parse_subjects(value: &Value) -> Result<Vec<Subject>, ApiError> {
    let bad = || {
        ApiError::wrong_type(
            "input",
            "a string, an array of strings or an array of content parts",
            value,
        )
    };
    match value {
        Value::String(s) => Ok(vec![Subject {
            text: s.clone(),
            has_image: false,
        }]),
        Value::Array(items) if items.is_empty() => Err(ApiError::invalid_value(
            "input",
            "Invalid 'input': empty array.",
        )),
        Value::Array(items) if items.iter().all(Value::is_string) => Ok(items
            .iter()
            .map(|v| Subject {
                text: v.as_str().unwrap_or_default().to_owned(),
                has_image: false,
            })
            .collect()),
        // Multi-modal parts are moderated together, as one result.
        Value::Array(items) if items.iter().all(Value::is_object) => Ok(vec![Subject {
            text: fields::content_text(value),
            has_image: items
                .iter()
                .any(|p| p.get("type").and_then(Value::as_str) == Some("image_url")),
        }]),
        _ => Err(bad()),
    }
}

fn mentions_kill(text: &str) -> bool {
    text.split(|c: char| !c.is_alphanumeric())
        .any(|word| word.eq_ignore_ascii_case("kill"))
}

fn result(subject: &Subject) -> Value {
    let flagged = mentions_kill(&subject.text);
    let mut categories = Map::new();
    let mut scores = Map::new();
    let mut applied = Map::new();
    for &name in CATEGORIES {
        let hit = flagged && name == "violence";
        categories.insert(name.to_owned(), json!(hit));
        scores.insert(name.to_owned(), json!(if hit { 0.91 } else { 0.0001 }));
        let mut types = vec!["text"];
        if subject.has_image && IMAGE_CATEGORIES.contains(&name) {
            types.push("image");
        }
        applied.insert(name.to_owned(), json!(types));
    }
    json!({
        "flagged": flagged,
        "categories": categories,
        "category_scores": scores,
        "category_applied_input_types": applied,
    })
}

pub async fn create(Extension(call): Extension<Arc<Call>>) -> Result<Response, ApiError> {
    let obj = call.body.json_object()?;
    let subjects = parse_subjects(fields::require(obj, "input")?)?;
    let model = fields::opt_str(obj, "model")?.unwrap_or(DEFAULT_MODEL);
    let results: Vec<Value> = subjects.iter().map(result).collect();
    Ok(Json(json!({
        "id": fields::make_id("modr", call.seed),
        "model": model,
        "results": results,
    }))
    .into_response())
}

#[cfg(test)]
mod tests {
    use super::mentions_kill;

    #[test]
    fn only_the_word_kill_flags() {
        assert!(mentions_kill("I will KILL the process."));
        assert!(!mentions_kill("skills and killer apps"));
    }
}
