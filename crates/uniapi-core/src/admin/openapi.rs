//! The OpenAPI 3.1 document of the admin API and the relay routes, served at `/api/openapi.json`.
//! A test checks that every route the router serves is described here.

use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

fn error_response(description: &str) -> Value {
    json!({"description": description, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}})
}

fn json_body(schema: &str) -> Value {
    json!({"required": true, "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}})
}

fn ok_json(description: &str, schema: Value) -> Value {
    json!({"description": description, "content": {"application/json": {"schema": schema}}})
}

fn reference(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

fn list_of(name: &str) -> Value {
    json!({"type": "object", "properties": {"data": {"type": "array", "items": reference(name)}}})
}

fn id_param() -> Value {
    json!([{"name": "id", "in": "path", "required": true, "schema": {"type": "integer"}}])
}

fn admin_op(summary: &str, body: Option<&str>, ok: Value) -> Value {
    let mut op = json!({
        "summary": summary,
        "tags": ["admin"],
        "security": [{"adminKey": []}],
        "responses": {"200": ok, "400": error_response("Invalid input"), "401": error_response("Missing or wrong admin key"), "404": error_response("Not found")},
    });
    if let Some(schema) = body {
        op["requestBody"] = json_body(schema);
    }
    op
}

fn relay_op(summary: &str, content_type: &str) -> Value {
    json!({
        "summary": summary,
        "tags": ["relay"],
        "security": [{"apiKey": []}],
        "description": "Same wire format as the OpenAI API; the body is passed to the upstream unchanged except for the mapped model name.",
        "requestBody": {"required": true, "content": {content_type: {"schema": {"type": "object", "additionalProperties": true}}}},
        "responses": {
            "200": {"description": "The upstream's answer, passed through (JSON, SSE, audio or text)"},
            "400": error_response("Malformed body or missing field"),
            "401": error_response("Missing, unknown, disabled or expired key"),
            "403": error_response("Model not allowed for this key"),
            "404": error_response("Model not served"),
            "413": error_response("Body over the limit"),
            "415": error_response("Wrong content type"),
            "429": error_response("Every upstream rate-limited"),
            "502": error_response("No upstream could answer"),
        }
    })
}

pub fn spec() -> Value {
    let mut paths = serde_json::Map::new();
    let mut add = |path: &str, item: Value| {
        paths.insert(path.to_string(), item);
    };
    for (path, summary) in [
        ("/v1/chat/completions", "Chat completions (JSON or SSE)"),
        ("/v1/completions", "Legacy completions (JSON or SSE)"),
        ("/v1/embeddings", "Embeddings"),
        ("/v1/moderations", "Moderations"),
        ("/v1/images/generations", "Image generation"),
        ("/v1/audio/speech", "Text to speech (binary audio)"),
        ("/v1/responses", "Responses (JSON or typed SSE)"),
    ] {
        add(path, json!({"post": relay_op(summary, "application/json")}));
    }
    for (path, summary) in [
        ("/v1/images/edits", "Image edit (multipart)"),
        (
            "/v1/images/variations",
            "Image variation (multipart; square PNG under 4 MB, n 1-10, size 256/512/1024)",
        ),
        (
            "/v1/audio/transcriptions",
            "Transcription (multipart, up to 25 MB)",
        ),
        (
            "/v1/audio/translations",
            "Translation (multipart, up to 25 MB)",
        ),
    ] {
        add(
            path,
            json!({"post": relay_op(summary, "multipart/form-data")}),
        );
    }
    add(
        "/v1/models",
        json!({"get": {"summary": "Models the calling key may use", "tags": ["relay"], "security": [{"apiKey": []}],
        "responses": {"200": ok_json("Model list", reference("ModelList")), "401": error_response("Bad key")}}}),
    );
    add(
        "/v1/models/{id}",
        json!({"get": {"summary": "One model", "tags": ["relay"], "security": [{"apiKey": []}],
        "parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "string"}}],
        "responses": {"200": ok_json("Model", reference("Model")), "404": error_response("Unknown model")}}}),
    );
    add(
        "/healthz",
        json!({"get": {"summary": "Liveness", "responses": {"200": {"description": "alive"}}}}),
    );
    add(
        "/readyz",
        json!({"get": {"summary": "Readiness: the store answers", "responses": {"200": {"description": "ready"}, "503": {"description": "store unreachable"}}}}),
    );

    add(
        "/api/admin/users",
        json!({
            "get": admin_op("List users", None, ok_json("Users", list_of("User"))),
            "post": admin_op("Create a user", Some("NewUser"), ok_json("Created user", reference("User"))),
        }),
    );
    add(
        "/api/admin/users/{id}",
        json!({
            "parameters": id_param(),
            "get": admin_op("Get a user", None, ok_json("User", reference("User"))),
            "patch": admin_op("Rename, enable or disable a user", Some("UserPatch"), ok_json("User", reference("User"))),
            "delete": admin_op("Delete a user and its keys", None, json!({"description": "Deleted"})),
        }),
    );
    add(
        "/api/admin/keys",
        json!({
            "get": admin_op("List API keys (masked)", None, ok_json("Keys", list_of("Key"))),
            "post": admin_op("Create an API key; the full key is returned only here", Some("NewKey"), ok_json("Created key", reference("Key"))),
        }),
    );
    add(
        "/api/admin/keys/{id}",
        json!({
            "parameters": id_param(),
            "get": admin_op("Get a key (masked)", None, ok_json("Key", reference("Key"))),
            "patch": admin_op("Change a key's name, state or limits (null clears a limit)", Some("KeyPatch"), ok_json("Key", reference("Key"))),
            "delete": admin_op("Delete a key", None, json!({"description": "Deleted"})),
        }),
    );
    add(
        "/api/admin/channels",
        json!({
            "get": admin_op("List channels (upstream keys masked)", None, ok_json("Channels", list_of("Channel"))),
            "post": admin_op("Create a channel", Some("NewChannel"), ok_json("Created channel", reference("Channel"))),
        }),
    );
    add(
        "/api/admin/channels/{id}",
        json!({
            "parameters": id_param(),
            "get": admin_op("Get a channel", None, ok_json("Channel", reference("Channel"))),
            "patch": admin_op("Change a channel; `keys` replaces the key list", Some("ChannelPatch"), ok_json("Channel", reference("Channel"))),
            "delete": admin_op("Delete a channel", None, json!({"description": "Deleted"})),
        }),
    );
    add(
        "/api/admin/tasks",
        json!({"get": {
            "summary": "Async tasks of every family, newest first",
            "tags": ["admin"],
            "security": [{"adminKey": []}],
            "parameters": [
                {"name": "user_id", "in": "query", "schema": {"type": "integer"}},
                {"name": "family", "in": "query", "schema": {"type": "string", "enum": ["suno", "udio", "midjourney", "kling", "luma", "fal"]}},
                {"name": "state", "in": "query", "schema": {"type": "string", "enum": ["SUBMITTED", "QUEUED", "IN_PROGRESS", "SUCCESS", "FAILURE"]}},
                {"name": "limit", "in": "query", "schema": {"type": "integer"}},
                {"name": "offset", "in": "query", "schema": {"type": "integer"}},
            ],
            "responses": {"200": ok_json("Tasks", list_of("Task")), "401": error_response("Bad admin key")},
        }}),
    );
    add(
        "/api/admin/tasks/{id}",
        json!({
            "parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "string"}}],
            "get": admin_op("Get a task", None, ok_json("Task", reference("Task"))),
        }),
    );
    add(
        "/api/admin/channels/{id}/test",
        json!({
            "parameters": id_param(),
            "post": admin_op("Check every key of the channel against the upstream", None, ok_json("Result per key", json!({"type": "object"}))),
        }),
    );
    add(
        "/api/admin/prices",
        json!({"get": admin_op("All prices in USD", None, ok_json("Prices by model", json!({"type": "object"})))}),
    );
    add(
        "/api/admin/prices/{model}",
        json!({
            "parameters": [{"name": "model", "in": "path", "required": true, "schema": {"type": "string"}}],
            "put": admin_op("Set a model's price", Some("Price"), ok_json("Stored price", json!({"type": "object"}))),
            "delete": admin_op("Remove a model's price", None, json!({"description": "Deleted"})),
        }),
    );
    let log_params: Vec<Value> = [
        "user_id",
        "key_id",
        "channel_id",
        "status",
        "since",
        "until",
        "limit",
        "offset",
    ]
    .iter()
    .map(|n| json!({"name": n, "in": "query", "schema": {"type": "integer"}}))
    .chain(std::iter::once(
        json!({"name": "model", "in": "query", "schema": {"type": "string"}}),
    ))
    .collect();
    add(
        "/api/admin/logs",
        json!({"get": {
            "summary": "Request logs, newest first",
            "tags": ["admin"],
            "security": [{"adminKey": []}],
            "parameters": log_params,
            "responses": {"200": ok_json("Logs", list_of("RequestLog")), "401": error_response("Bad admin key")},
        }}),
    );

    let string = json!({"type": "string"});
    let integer = json!({"type": "integer"});
    let number = json!({"type": "number"});
    let boolean = json!({"type": "boolean"});
    let strings = json!({"type": "array", "items": {"type": "string"}});
    let mut schemas = serde_json::Map::new();
    schemas.insert("Error".into(), json!({"type": "object", "required": ["error"], "properties": {"error": {"type": "object",
                    "required": ["message", "type", "param", "code"],
                    "properties": {"message": string, "type": string, "param": {"type": ["string", "null"]}, "code": {"type": ["string", "null"]}}}}}));
    schemas.insert("Model".into(), json!({"type": "object", "properties": {"id": string, "object": string, "created": integer, "owned_by": string}}));
    schemas.insert("ModelList".into(), json!({"type": "object", "properties": {"object": string, "data": {"type": "array", "items": reference("Model")}}}));
    schemas.insert("User".into(), json!({"type": "object", "properties": {"id": integer, "name": string, "balance_usd": number, "balance_nano": integer, "enabled": boolean, "created_at": integer}}));
    schemas.insert("NewUser".into(), json!({"type": "object", "required": ["name"], "properties": {"name": string, "balance_usd": number}}));
    schemas.insert(
        "UserPatch".into(),
        json!({"type": "object", "properties": {"name": string, "enabled": boolean}}),
    );
    schemas.insert("Key".into(), json!({"type": "object", "properties": {"id": integer, "user_id": integer, "name": string,
                    "key": {"type": "string", "description": "The full key on creation, a masked hint afterwards"},
                    "models": {"type": ["array", "null"], "items": string}, "quota_usd": {"type": ["number", "null"]},
                    "expires_at": {"type": ["integer", "null"], "description": "Unix seconds"}, "rpm": {"type": ["integer", "null"]},
                    "tpm": {"type": ["integer", "null"]}, "max_concurrency": {"type": ["integer", "null"]}, "enabled": boolean, "created_at": integer}}));
    schemas.insert("NewKey".into(), json!({"type": "object", "required": ["user_id", "name"], "properties": {"user_id": integer, "name": string, "models": strings,
                    "quota_usd": number, "expires_at": integer, "rpm": integer, "tpm": integer, "max_concurrency": integer,
                    "key": {"type": "string", "description": "Optional fixed value: sk- and at least 40 characters"}}}));
    schemas.insert("KeyPatch".into(), json!({"type": "object", "properties": {"name": string, "enabled": boolean, "models": {"type": ["array", "null"], "items": string},
                    "quota_usd": {"type": ["number", "null"]}, "expires_at": {"type": ["integer", "null"]}, "rpm": {"type": ["integer", "null"]},
                    "tpm": {"type": ["integer", "null"]}, "max_concurrency": {"type": ["integer", "null"]}}}));
    schemas.insert("Channel".into(), json!({"type": "object", "properties": {"id": integer, "name": string, "kind": string, "base_url": string,
                    "keys": {"type": "array", "items": {"type": "object", "properties": {"id": integer, "key": {"type": "string", "description": "masked"}, "enabled": boolean, "disabled_reason": {"type": ["string", "null"]}}}},
                    "models": strings, "model_map": {"type": "object", "additionalProperties": string}, "priority": integer, "weight": integer,
                    "modes": {"type": ["array", "null"], "items": string}, "enabled": boolean, "cooldown_until": {"type": ["integer", "null"]},
                    "created_at": integer, "updated_at": integer}}));
    schemas.insert("NewChannel".into(), json!({"type": "object", "required": ["name", "kind", "base_url", "keys"], "properties": {"name": string,
                    "kind": {"type": "string", "enum": crate::catalog::ChannelKind::ALL.iter().map(|k| k.as_str()).collect::<Vec<_>>()}, "base_url": string, "keys": strings, "models": strings,
                    "model_map": {"type": "object", "additionalProperties": string}, "priority": integer, "weight": integer, "modes": strings, "enabled": boolean}}));
    schemas.insert("ChannelPatch".into(), json!({"type": "object", "properties": {"name": string, "kind": string, "base_url": string, "keys": strings, "models": strings,
                    "model_map": {"type": "object", "additionalProperties": string}, "priority": integer, "weight": integer, "modes": {"type": ["array", "null"], "items": string}, "enabled": boolean}}));
    schemas.insert("Price".into(), json!({"type": "object", "description": "USD amounts", "properties": {"input_per_mtok": number, "output_per_mtok": number,
                    "cached_input_per_mtok": number, "per_call": number, "per_image": number, "per_mchar": number, "per_audio_minute": number, "free": boolean, "max_output_tokens": integer}}));
    schemas.insert("Task".into(), json!({"type": "object", "properties": {"id": string, "user_id": integer, "key_id": integer, "family": string,
                    "action": string, "price_name": string, "channel_id": integer, "upstream_id": string,
                    "state": {"type": "string", "enum": ["SUBMITTED", "QUEUED", "IN_PROGRESS", "SUCCESS", "FAILURE"]},
                    "progress": string, "result": {}, "fail_reason": {"type": ["string", "null"]}, "charged_nano": integer,
                    "refunded": boolean, "version": integer, "polls": integer, "next_poll_at": integer, "created_at": integer,
                    "started_at": {"type": ["integer", "null"]}, "finished_at": {"type": ["integer", "null"]}, "updated_at": integer}}));
    schemas.insert("RequestLog".into(), json!({"type": "object", "properties": {"id": string, "created_at": integer, "user_id": integer, "key_id": integer, "method": string,
                    "path": string, "model": string, "upstream_model": string, "channel_id": integer, "status": integer, "stream": boolean,
                    "outcome": {"type": "string", "enum": ["complete", "client_gone", "upstream_cut", "failed", "rejected"]},
                    "attempts": {"type": "array", "items": {"type": "object", "properties": {"channel_id": integer, "channel": string, "key_hint": string,
                        "status": {"type": ["integer", "null"]}, "error": {"type": ["string", "null"]}, "elapsed_ms": integer}}},
                    "latency_ms": integer, "ttfb_ms": integer, "error": {"type": ["string", "null"]}}}));
    json!({
        "openapi": "3.1.0",
        "info": {"title": "uniapi", "version": env!("CARGO_PKG_VERSION"),
                 "description": "A unified AI API gateway: the OpenAI-family relay and the operator's admin API."},
        "paths": paths,
        "components": {
            "securitySchemes": {
                "apiKey": {"type": "http", "scheme": "bearer", "description": "A uniapi API key (sk-...)"},
                "adminKey": {"type": "http", "scheme": "bearer", "description": "The admin key"},
            },
            "schemas": schemas,
        }
    })
}

pub async fn document() -> Response {
    axum::Json(spec()).into_response()
}
