//! Fault injection: rules queued through `POST /__sandbox/faults` and per-request
//! `x-sandbox-*` headers, resolved by the gate into one `CallPlan` per call.

use std::collections::VecDeque;
use std::str::FromStr;
use std::sync::atomic::Ordering;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::ApiError;
use crate::state::LiveConfig;

/// One queued fault: the next `count` matching calls (after auth passes) misbehave.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FaultRule {
    #[serde(default = "one")]
    pub count: u32,
    /// Answer this status with an OpenAI error object (or `body`).
    pub status: Option<u16>,
    /// Only calls to this exact path match; any `/v1` or `/suno` path when absent.
    pub path: Option<String>,
    /// Streams send this many content chunks, then the body aborts (no finish, no `[DONE]`).
    pub cut_after: Option<usize>,
    /// Extra delay before the response head.
    pub latency_ms: Option<u64>,
    /// Response body replacing the generated error object.
    pub body: Option<Value>,
    /// `retry-after` header (seconds) on the injected error.
    pub retry_after: Option<u64>,
    /// Answer without any usage (no `usage` object, no usage chunk), like upstreams that report none.
    #[serde(default)]
    pub no_usage: bool,
}

fn one() -> u32 {
    1
}

impl FaultRule {
    pub fn validate(&self) -> Result<(), String> {
        if self.count == 0 {
            return Err("count must be at least 1".into());
        }
        if let Some(status) = self.status {
            StatusCode::from_u16(status).map_err(|_| format!("invalid status {status}"))?;
        }
        Ok(())
    }

    fn matches(&self, path: &str) -> bool {
        self.path.as_deref().is_none_or(|p| p == path)
    }
}

#[derive(Default)]
pub struct FaultQueue {
    rules: Mutex<VecDeque<FaultRule>>,
}

impl FaultQueue {
    pub fn push(&self, rule: FaultRule) {
        self.lock().push_back(rule);
    }

    pub fn clear(&self) {
        self.lock().clear();
    }

    pub fn pending(&self) -> Vec<FaultRule> {
        self.lock().iter().cloned().collect()
    }

    /// Consumes one use of the oldest rule matching `path`.
    pub fn take(&self, path: &str) -> Option<FaultRule> {
        let mut rules = self.lock();
        let index = rules.iter().position(|r| r.matches(path))?;
        let rule = rules.get_mut(index)?;
        rule.count -= 1;
        let taken = FaultRule {
            count: 1,
            ..rule.clone()
        };
        if rule.count == 0 {
            rules.remove(index);
        }
        Some(taken)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<FaultRule>> {
        self.rules.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Per-request knobs sent as `x-sandbox-*` headers.
#[derive(Default)]
pub struct HeaderKnobs {
    pub fail_status: Option<StatusCode>,
    pub retry_after: Option<u64>,
    pub cut_after: Option<usize>,
    pub latency_ms: Option<u64>,
    pub chunks: Option<usize>,
    pub chunk_delay_ms: Option<u64>,
    pub no_usage: bool,
}

impl HeaderKnobs {
    pub fn parse(headers: &HeaderMap) -> Result<Self, ApiError> {
        let fail_status = header_num::<u16>(headers, "x-sandbox-fail-status")?
            .map(|code| {
                StatusCode::from_u16(code).map_err(|_| {
                    ApiError::invalid_value(
                        "x-sandbox-fail-status",
                        format!("Invalid x-sandbox-fail-status {code}."),
                    )
                })
            })
            .transpose()?;
        Ok(Self {
            fail_status,
            retry_after: header_num(headers, "x-sandbox-retry-after")?,
            cut_after: header_num(headers, "x-sandbox-cut-after")?,
            latency_ms: header_num(headers, "x-sandbox-latency-ms")?,
            chunks: header_num(headers, "x-sandbox-chunks")?,
            chunk_delay_ms: header_num(headers, "x-sandbox-chunk-delay-ms")?,
            no_usage: headers.contains_key("x-sandbox-no-usage"),
        })
    }
}

fn header_num<T: FromStr>(headers: &HeaderMap, name: &str) -> Result<Option<T>, ApiError> {
    let Some(value) = headers.get(name) else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .map(Some)
        .ok_or_else(|| {
            ApiError::invalid_value(
                name,
                format!("Header {name} must be a non-negative integer."),
            )
        })
}

/// How one admitted call behaves, after config, headers and fault rule are combined.
pub struct CallPlan {
    /// Delay before the response head: header override or live config, plus the rule's delay.
    pub latency: Duration,
    pub stream_chunks: usize,
    pub chunk_delay: Duration,
    pub cut_after: Option<usize>,
    pub fail: Option<ApiError>,
    /// Leave usage out of the answer (chat completions).
    pub no_usage: bool,
}

impl CallPlan {
    pub fn resolve(live: &LiveConfig, knobs: &HeaderKnobs, rule: Option<&FaultRule>) -> Self {
        let base_latency = knobs
            .latency_ms
            .unwrap_or_else(|| live.latency_ms.load(Ordering::Relaxed));
        let rule_latency = rule.and_then(|r| r.latency_ms).unwrap_or(0);
        let rule_fail = rule.and_then(|r| {
            let status = r.status.and_then(|s| StatusCode::from_u16(s).ok())?;
            Some(ApiError::injected(status, r.retry_after, r.body.clone()))
        });
        let header_fail = knobs
            .fail_status
            .map(|status| ApiError::injected(status, knobs.retry_after, None));
        let rule_cut = rule
            .filter(|r| r.status.is_none())
            .and_then(|r| r.cut_after);
        Self {
            latency: Duration::from_millis(base_latency.saturating_add(rule_latency)),
            stream_chunks: knobs
                .chunks
                .unwrap_or_else(|| live.stream_chunks.load(Ordering::Relaxed))
                .max(1),
            chunk_delay: Duration::from_millis(
                knobs
                    .chunk_delay_ms
                    .unwrap_or_else(|| live.chunk_delay_ms.load(Ordering::Relaxed)),
            ),
            cut_after: rule_cut.or(knobs.cut_after),
            fail: rule_fail.or(header_fail),
            no_usage: rule.is_some_and(|r| r.no_usage) || knobs.no_usage,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(count: u32, path: Option<&str>) -> FaultRule {
        FaultRule {
            count,
            status: Some(500),
            path: path.map(str::to_owned),
            cut_after: None,
            latency_ms: None,
            body: None,
            retry_after: None,
            no_usage: false,
        }
    }

    #[test]
    fn rules_are_consumed_in_fifo_order_per_path() {
        let queue = FaultQueue::default();
        queue.push(rule(2, Some("/v1/embeddings")));
        queue.push(rule(1, None));
        assert!(
            queue
                .take("/v1/chat/completions")
                .is_some_and(|r| r.path.is_none())
        );
        assert!(queue.take("/v1/chat/completions").is_none());
        assert!(queue.take("/v1/embeddings").is_some());
        assert!(queue.take("/v1/embeddings").is_some());
        assert!(queue.take("/v1/embeddings").is_none());
        assert!(queue.pending().is_empty());
    }
}
