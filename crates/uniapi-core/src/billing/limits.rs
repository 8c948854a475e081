//! Per-key limits on the request path: requests and tokens per minute (token buckets that refill
//! continuously, like OpenAI's) and concurrent requests. State is in memory, keyed by key id.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use foldhash::HashMap;

/// The limits a key was given (any may be absent).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KeyLimits {
    pub rpm: Option<i64>,
    pub tpm: Option<i64>,
    pub max_concurrency: Option<i64>,
}

#[derive(Debug)]
struct Bucket {
    capacity: f64,
    tokens: f64,
    refilled: Instant,
}

impl Bucket {
    fn new(per_minute: i64) -> Bucket {
        let capacity = per_minute as f64;
        Bucket {
            capacity,
            tokens: capacity,
            refilled: Instant::now(),
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.capacity / 60.0).min(self.capacity);
        self.refilled = now;
    }

    /// Takes `n`, or says how many seconds until `n` are there.
    fn take(&mut self, n: f64, now: Instant) -> Result<(), u64> {
        self.refill(now);
        if self.tokens >= n {
            self.tokens -= n;
            Ok(())
        } else {
            let missing = n.min(self.capacity) - self.tokens;
            Err((missing * 60.0 / self.capacity).ceil().max(1.0) as u64)
        }
    }
}

#[derive(Debug, Default)]
struct KeyState {
    requests: Option<Bucket>,
    tokens: Option<Bucket>,
}

/// A key's buckets and its count of requests in flight.
type KeyEntry = (Arc<Mutex<KeyState>>, Arc<AtomicI64>);

#[derive(Default)]
pub struct Limiter {
    keys: Mutex<HashMap<i64, KeyEntry>>,
}

/// Which limit refused a request, and when to retry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exceeded {
    Requests { retry_after: u64 },
    Tokens { retry_after: u64 },
    Concurrency,
}

/// The rate-limit headers of an answer (OpenAI's names).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Remaining {
    pub limit_requests: Option<i64>,
    pub remaining_requests: Option<i64>,
    pub limit_tokens: Option<i64>,
    pub remaining_tokens: Option<i64>,
}

/// An admitted request: holds its concurrency slot until dropped.
#[derive(Debug)]
pub struct Permit {
    in_flight: Option<Arc<AtomicI64>>,
    state: Option<Arc<Mutex<KeyState>>>,
    tokens_taken: f64,
    pub remaining: Remaining,
}

impl Permit {
    /// Gives back tokens taken for the estimate that the request did not use.
    pub fn settle_tokens(&mut self, used: u64) {
        let unused = self.tokens_taken - used as f64;
        self.tokens_taken = used as f64;
        if let Some(state) = &self.state
            && unused > 0.0
        {
            let mut state = state.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(bucket) = state.tokens.as_mut() {
                bucket.tokens = (bucket.tokens + unused).min(bucket.capacity);
            }
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(in_flight) = &self.in_flight {
            in_flight.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl Limiter {
    /// Admits a request estimated at `tokens` tokens, or says which limit it exceeds.
    pub fn admit(&self, key_id: i64, limits: KeyLimits, tokens: u64) -> Result<Permit, Exceeded> {
        if limits == KeyLimits::default() {
            return Ok(Permit {
                in_flight: None,
                state: None,
                tokens_taken: 0.0,
                remaining: Remaining::default(),
            });
        }
        let (state, in_flight) = {
            let mut keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
            keys.entry(key_id).or_default().clone()
        };
        if let Some(max) = limits.max_concurrency
            && in_flight.fetch_add(1, Ordering::AcqRel) >= max
        {
            in_flight.fetch_sub(1, Ordering::AcqRel);
            return Err(Exceeded::Concurrency);
        }
        let slot = limits.max_concurrency.map(|_| in_flight.clone());
        let release = |slot: &Option<Arc<AtomicI64>>| {
            if let Some(s) = slot {
                s.fetch_sub(1, Ordering::AcqRel);
            }
        };
        let now = Instant::now();
        let mut guard = state.lock().unwrap_or_else(|e| e.into_inner());
        let key = &mut *guard;
        // a changed limit starts a fresh bucket
        for (bucket, limit) in [
            (&mut key.requests, limits.rpm),
            (&mut key.tokens, limits.tpm),
        ] {
            match limit {
                Some(l) if bucket.as_ref().is_none_or(|b| b.capacity != l as f64) => {
                    *bucket = Some(Bucket::new(l))
                }
                None => *bucket = None,
                _ => {}
            }
        }
        if let Some(bucket) = key.requests.as_mut() {
            bucket.refill(now);
            if bucket.tokens < 1.0 {
                release(&slot);
                return Err(Exceeded::Requests {
                    retry_after: bucket.take(1.0, now).err().unwrap_or(1),
                });
            }
        }
        let tokens = tokens as f64;
        if let Some(bucket) = key.tokens.as_mut()
            && let Err(retry_after) = bucket.take(tokens.min(bucket.capacity), now)
        {
            release(&slot);
            return Err(Exceeded::Tokens { retry_after });
        }
        if let Some(bucket) = key.requests.as_mut() {
            bucket.tokens -= 1.0;
        }
        let remaining = Remaining {
            limit_requests: limits.rpm,
            remaining_requests: key.requests.as_ref().map(|b| b.tokens.floor() as i64),
            limit_tokens: limits.tpm,
            remaining_tokens: key.tokens.as_ref().map(|b| b.tokens.floor() as i64),
        };
        let taken = key.tokens.as_ref().map_or(0.0, |b| tokens.min(b.capacity));
        drop(guard);
        Ok(Permit {
            in_flight: slot,
            state: Some(state),
            tokens_taken: taken,
            remaining,
        })
    }

    /// What a refused request's headers say: the limits and nothing left.
    pub fn exhausted(limits: KeyLimits) -> Remaining {
        Remaining {
            limit_requests: limits.rpm,
            remaining_requests: limits.rpm.map(|_| 0),
            limit_tokens: limits.tpm,
            remaining_tokens: limits.tpm.map(|_| 0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_per_minute_are_counted_and_refused_with_a_retry_time() {
        let limiter = Limiter::default();
        let limits = KeyLimits {
            rpm: Some(3),
            ..Default::default()
        };
        for left in [2, 1, 0] {
            let permit = limiter.admit(1, limits, 0).unwrap();
            assert_eq!(permit.remaining.remaining_requests, Some(left));
        }
        assert_eq!(
            limiter.admit(1, limits, 0).unwrap_err(),
            Exceeded::Requests { retry_after: 20 }
        );
        // another key is not affected
        assert!(limiter.admit(2, limits, 0).is_ok());
    }

    #[test]
    fn tokens_per_minute_take_the_estimate_and_give_back_the_unused() {
        let limiter = Limiter::default();
        let limits = KeyLimits {
            tpm: Some(1000),
            ..Default::default()
        };
        let mut permit = limiter.admit(1, limits, 800).unwrap();
        assert_eq!(permit.remaining.remaining_tokens, Some(200));
        assert!(matches!(
            limiter.admit(1, limits, 300),
            Err(Exceeded::Tokens { .. })
        ));
        permit.settle_tokens(100);
        assert_eq!(
            limiter
                .admit(1, limits, 300)
                .unwrap()
                .remaining
                .remaining_tokens,
            Some(600)
        );
    }

    #[test]
    fn concurrency_slots_return_when_the_permit_drops() {
        let limiter = Limiter::default();
        let limits = KeyLimits {
            max_concurrency: Some(2),
            ..Default::default()
        };
        let a = limiter.admit(1, limits, 0).unwrap();
        let _b = limiter.admit(1, limits, 0).unwrap();
        assert_eq!(
            limiter.admit(1, limits, 0).unwrap_err(),
            Exceeded::Concurrency
        );
        drop(a);
        assert!(limiter.admit(1, limits, 0).is_ok());
    }
}
