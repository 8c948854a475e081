//! The OpenAI error object (`{"error":{"message","type","param","code"}}`) and the constructors
//! for the errors the sandbox answers; every non-2xx response goes through here.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// Boxed so `Result<_, ApiError>` stays one pointer wide on the happy path.
#[derive(Debug, Clone)]
pub struct ApiError(Box<ErrorDetail>);

#[derive(Debug, Clone)]
pub struct ErrorDetail {
    pub status: StatusCode,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<String>,
    pub retry_after: Option<u64>,
    /// Replaces the error object entirely (fault rules may carry their own body).
    pub raw_body: Option<Value>,
}

impl ApiError {
    pub fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self(Box::new(ErrorDetail {
            status,
            message: message.into(),
            kind,
            param: None,
            code: None,
            retry_after: None,
            raw_body: None,
        }))
    }

    pub fn param(mut self, param: impl Into<String>) -> Self {
        self.0.param = Some(param.into());
        self
    }

    pub fn code(mut self, code: impl Into<String>) -> Self {
        self.0.code = Some(code.into());
        self
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
    }

    pub fn missing(param: &str) -> Self {
        Self::invalid(format!("Missing required parameter: '{param}'."))
            .param(param)
            .code("missing_required_parameter")
    }

    pub fn wrong_type(param: &str, expected: &str, got: &Value) -> Self {
        Self::invalid(format!(
            "Invalid type for '{param}': expected {expected}, but got {} instead.",
            json_kind(got)
        ))
        .param(param)
        .code("invalid_type")
    }

    pub fn invalid_value(param: &str, message: impl Into<String>) -> Self {
        Self::invalid(message).param(param).code("invalid_value")
    }

    pub fn unparsable_json() -> Self {
        Self::invalid(
            "We could not parse the JSON body of your request. (HINT: This likely means you \
             aren't using your HTTP library correctly. The OpenAI API expects a JSON payload, but \
             what was sent was not valid JSON.)",
        )
    }

    pub fn not_found(method: &str, path: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            format!("Invalid URL ({method} {path})"),
        )
    }

    /// The error a fault rule or the `x-sandbox-fail-status` header asks for.
    pub fn injected(status: StatusCode, retry_after: Option<u64>, body: Option<Value>) -> Self {
        let mut err = if status == StatusCode::TOO_MANY_REQUESTS {
            Self::new(
                status,
                "rate_limit_error",
                "Rate limit reached for requests (sandbox fault injection). Please try again later.",
            )
            .code("rate_limit_exceeded")
        } else if status.is_server_error() {
            Self::new(
                status,
                "server_error",
                "The server had an error while processing your request. Sorry about that! \
                 (sandbox fault injection)",
            )
        } else {
            Self::new(
                status,
                "invalid_request_error",
                format!("Sandbox fault injection: HTTP {}.", status.as_u16()),
            )
        };
        err.0.retry_after = retry_after;
        err.0.raw_body = body;
        err
    }

    pub fn body(&self) -> Value {
        let detail = &self.0;
        if let Some(raw) = &detail.raw_body {
            return raw.clone();
        }
        json!({
            "error": {
                "message": detail.message,
                "type": detail.kind,
                "param": detail.param,
                "code": detail.code,
            }
        })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.0.status, axum::Json(self.body())).into_response();
        if let Some(secs) = self.0.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_f64() => "a decimal",
        Value::Number(_) => "an integer",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}
