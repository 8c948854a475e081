//! What every task family of the sandbox shares: a bounded store of tasks by id, and the timeline
//! a task follows from submission (`SUBMITTED` for the first tenth of its duration, then
//! `IN_PROGRESS` with a percentage, then done — succeeded or failed as the request asked).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use crate::text::mix;

/// Tasks kept per family; the oldest are forgotten first (a long benchmark must not grow without bound).
const TASK_CAPACITY: usize = 10_000;

/// Where a task is at one instant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Submitted,
    /// Percent done, 0..=99.
    InProgress(u64),
    Done,
}

/// When a task was submitted and how long it runs.
#[derive(Clone, Debug)]
pub struct Timeline {
    /// Unix milliseconds at submission (for the families' time fields).
    pub submit_ms: u64,
    /// Monotonic submission instant (for the phase).
    pub started: Instant,
    /// Submission to terminal status; `IN_PROGRESS` starts at a tenth of it.
    pub duration_ms: u64,
}

impl Timeline {
    pub fn start(duration_ms: u64) -> Self {
        Self {
            submit_ms: crate::state::unix_now_ms(),
            started: Instant::now(),
            duration_ms,
        }
    }

    pub fn start_after_ms(&self) -> u64 {
        self.duration_ms / 10
    }

    /// Unix milliseconds when the task left `SUBMITTED`, and when it finished.
    pub fn start_ms(&self) -> u64 {
        self.submit_ms + self.start_after_ms()
    }

    pub fn finish_ms(&self) -> u64 {
        self.submit_ms + self.duration_ms
    }

    pub fn phase(&self, now: Instant) -> Phase {
        let elapsed = u64::try_from(now.saturating_duration_since(self.started).as_millis())
            .unwrap_or(u64::MAX);
        if elapsed >= self.duration_ms {
            Phase::Done
        } else if elapsed < self.start_after_ms() {
            Phase::Submitted
        } else {
            // duration_ms > elapsed >= 0 here, so no division by zero.
            Phase::InProgress((elapsed.saturating_mul(100) / self.duration_ms).min(99))
        }
    }
}

/// A family's tasks by id, bounded.
pub struct TaskStore<T> {
    inner: Mutex<Tasks<T>>,
}

struct Tasks<T> {
    by_id: HashMap<String, Arc<T>>,
    order: VecDeque<String>,
}

impl<T> Default for TaskStore<T> {
    fn default() -> Self {
        Self {
            inner: Mutex::new(Tasks {
                by_id: HashMap::new(),
                order: VecDeque::new(),
            }),
        }
    }
}

impl<T> TaskStore<T> {
    pub fn insert(&self, id: String, task: T) -> Arc<T> {
        let mut tasks = self.lock();
        while tasks.order.len() >= TASK_CAPACITY {
            if let Some(old) = tasks.order.pop_front() {
                tasks.by_id.remove(&old);
            }
        }
        let task = Arc::new(task);
        tasks.order.push_back(id.clone());
        tasks.by_id.insert(id, task.clone());
        task
    }

    pub fn get(&self, id: &str) -> Option<Arc<T>> {
        self.lock().by_id.get(id).cloned()
    }

    fn lock(&self) -> MutexGuard<'_, Tasks<T>> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A version-4-shaped uuid drawn from `seed`.
pub fn uuid(seed: u64) -> String {
    let a = mix(seed);
    let b = mix(a);
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        ((b >> 48) & 0x3fff) | 0x8000,
        b & 0xffff_ffff_ffff
    )
}

/// Whether `text` contains `word` as a whole word (ASCII case-insensitive): the `reject` / `fail`
/// triggers every task family understands in its prompt.
pub fn has_word(text: &str, word: &str) -> bool {
    text.split(|c: char| !c.is_alphanumeric())
        .any(|w| w.eq_ignore_ascii_case(word))
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` for unix milliseconds.
pub fn iso8601(unix_ms: u64) -> String {
    let secs = unix_ms / 1000;
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        unix_ms % 1000
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso8601_formats_known_instants() {
        assert_eq!(iso8601(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(iso8601(1_726_911_801_123), "2024-09-21T09:43:21.123Z");
        assert_eq!(iso8601(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn uuids_look_like_v4() {
        let id = uuid(42);
        let groups: Vec<usize> = id.split('-').map(str::len).collect();
        assert_eq!(groups, [8, 4, 4, 4, 12]);
        assert_eq!(id.as_bytes()[14], b'4');
        assert_ne!(uuid(1), uuid(2));
    }

    #[test]
    fn words_match_whole_words_only() {
        assert!(has_word("please FAIL, now", "fail"));
        assert!(has_word("fail", "fail"));
        assert!(!has_word("failure is fine", "fail"));
        assert!(!has_word("rejected", "reject"));
    }

    #[test]
    fn a_task_moves_through_its_phases() {
        let t = Timeline::start(1000);
        assert_eq!(t.phase(t.started), Phase::Submitted);
        let mid = t.started + std::time::Duration::from_millis(500);
        assert_eq!(t.phase(mid), Phase::InProgress(50));
        assert_eq!(
            t.phase(t.started + std::time::Duration::from_millis(1000)),
            Phase::Done
        );
    }

    #[test]
    fn the_store_forgets_the_oldest_first() {
        let store = TaskStore::default();
        for i in 0..=TASK_CAPACITY {
            store.insert(i.to_string(), i);
        }
        assert!(store.get("0").is_none());
        assert_eq!(store.get("1").as_deref(), Some(&1));
    }
}
