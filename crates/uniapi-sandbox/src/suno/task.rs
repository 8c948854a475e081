//! Suno tasks: what was submitted, and the `TaskDto` (suno.md §4.1) a task shows at a given
//! instant. Everything but ids and times is a pure function of the request.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use serde_json::{Value, json};

use crate::text::{fnv64, mix};

/// Tasks kept; the oldest are forgotten first (a long benchmark must not grow without bound).
const TASK_CAPACITY: usize = 10_000;
/// Clips a MUSIC task yields.
const CLIPS_PER_TASK: u64 = 2;
const MEDIA_BASE: &str = "https://sandbox.invalid/suno";
/// Creator info on every clip.
const HANDLE: &str = "uniapi-sandbox";
const USER_ID: &str = "00000000-0000-4000-8000-000000000001";
const FAIL_REASON: &str = "sandbox failure on request";

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Music,
    Lyrics,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Music => "MUSIC",
            Self::Lyrics => "LYRICS",
        }
    }
}

pub struct MusicAsk {
    pub prompt: Option<String>,
    pub gpt_description_prompt: Option<String>,
    pub title: Option<String>,
    pub tags: Option<String>,
    pub make_instrumental: bool,
    pub mv: String,
}

pub enum TaskAsk {
    Music(MusicAsk),
    Lyrics { prompt: String },
}

impl TaskAsk {
    /// The free-text fields the `reject`/`fail` triggers look at.
    pub fn prompts(&self) -> Vec<&str> {
        match self {
            Self::Music(m) => [&m.prompt, &m.gpt_description_prompt]
                .into_iter()
                .flatten()
                .map(String::as_str)
                .collect(),
            Self::Lyrics { prompt } => vec![prompt.as_str()],
        }
    }
}

pub struct Task {
    pub id: String,
    pub action: Action,
    pub notify_hook: String,
    /// Unix milliseconds at submission (for the `*_time` fields).
    pub submit_ms: u64,
    /// Monotonic submission instant (for the phase).
    pub started: Instant,
    /// Submission to terminal status; `IN_PROGRESS` starts at a tenth of it.
    pub duration_ms: u64,
    pub fails: bool,
    pub seed: u64,
    pub ask: TaskAsk,
}

enum Phase {
    Submitted,
    InProgress(u64),
    Done,
}

impl Task {
    fn start_after_ms(&self) -> u64 {
        self.duration_ms / 10
    }

    fn phase(&self, now: Instant) -> Phase {
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

    /// The task as `GET /suno/fetch/{id}` shows it at `now`.
    pub fn dto(&self, now: Instant) -> Value {
        let phase = self.phase(now);
        let submit_time = self.submit_ms / 1000;
        let start_time = match phase {
            Phase::Submitted => 0,
            _ => (self.submit_ms + self.start_after_ms()) / 1000,
        };
        let finish_time = match phase {
            Phase::Done => (self.submit_ms + self.duration_ms) / 1000,
            _ => 0,
        };
        let (status, progress, fail_reason, data) = match (&phase, self.fails) {
            (Phase::Submitted, _) => ("SUBMITTED", "0%".to_owned(), "", self.empty_data()),
            (Phase::InProgress(pct), _) => ("IN_PROGRESS", format!("{pct}%"), "", self.data(false)),
            (Phase::Done, false) => ("SUCCESS", "100%".to_owned(), "", self.data(true)),
            (Phase::Done, true) => ("FAILURE", "100%".to_owned(), FAIL_REASON, self.empty_data()),
        };
        json!({
            "task_id": self.id,
            "notify_hook": self.notify_hook,
            "action": self.action.as_str(),
            "status": status,
            "fail_reason": fail_reason,
            "submit_time": submit_time,
            "start_time": start_time,
            "finish_time": finish_time,
            "progress": progress,
            "data": data,
        })
    }

    /// `data` before anything is produced (and after a failure): no clips / no lyrics.
    fn empty_data(&self) -> Value {
        match self.action {
            Action::Music => json!([]),
            Action::Lyrics => Value::Null,
        }
    }

    fn data(&self, complete: bool) -> Value {
        match &self.ask {
            TaskAsk::Music(music) => Value::Array(
                (0..CLIPS_PER_TASK)
                    .map(|i| self.clip(music, i, complete))
                    .collect(),
            ),
            TaskAsk::Lyrics { prompt } => json!({
                "id": uuid(mix(self.seed ^ 0x4C59_5249_4353)),
                "text": lyrics(prompt),
                "title": title_from(prompt),
                "status": if complete { "complete" } else { "streaming" },
            }),
        }
    }

    /// One clip (suno.md §4.3), `streaming` or `complete`.
    fn clip(&self, music: &MusicAsk, index: u64, complete: bool) -> Value {
        let id = uuid(mix(self.seed ^ (index + 1).wrapping_mul(0xC1A9)));
        let source = music
            .gpt_description_prompt
            .as_deref()
            .or(music.prompt.as_deref())
            .unwrap_or_default();
        let title = music.title.clone().unwrap_or_else(|| title_from(source));
        let tags = music
            .tags
            .clone()
            .unwrap_or_else(|| "sandbox pop".to_owned());
        let prompt = if music.make_instrumental {
            String::new()
        } else {
            music.prompt.clone().unwrap_or_else(|| lyrics(source))
        };
        let major = major_version(&music.mv);
        let duration = 90 + (fnv64(source.as_bytes()).wrapping_add(index * 37) % 90);
        let (status, audio_url, video_url) = if complete {
            (
                "complete",
                format!("{MEDIA_BASE}/{id}.mp3"),
                format!("{MEDIA_BASE}/{id}.mp4"),
            )
        } else {
            (
                "streaming",
                format!("{MEDIA_BASE}/stream/{id}"),
                String::new(),
            )
        };
        json!({
            "id": id,
            "title": title,
            "handle": HANDLE,
            "display_name": "Sandbox",
            "user_id": USER_ID,
            "status": status,
            "audio_url": audio_url,
            "image_url": format!("{MEDIA_BASE}/image_{id}.jpeg"),
            "image_large_url": format!("{MEDIA_BASE}/image_large_{id}.jpeg"),
            "video_url": video_url,
            "model_name": format!("chirp-{major}"),
            "major_model_version": major,
            "created_at": iso8601(self.submit_ms),
            "metadata": {
                "tags": tags,
                "prompt": prompt,
                "gpt_description_prompt": music.gpt_description_prompt,
                "duration": if complete { json!(duration) } else { Value::Null },
                "error_type": null,
                "error_message": null,
                "type": "gen",
                "stream": true,
                "history": null,
                "concat_history": null,
                "refund_credits": false,
                "audio_prompt_id": null,
            },
            "is_liked": false,
            "is_public": false,
            "is_trashed": false,
            "is_video_pending": !complete,
            "is_handle_updated": false,
            "play_count": 0,
            "upvote_count": 0,
            "reaction": null,
        })
    }
}

#[derive(Default)]
pub struct TaskStore {
    inner: Mutex<Tasks>,
}

#[derive(Default)]
struct Tasks {
    by_id: HashMap<String, Arc<Task>>,
    order: VecDeque<String>,
}

impl TaskStore {
    pub fn insert(&self, task: Task) {
        let mut tasks = self.lock();
        while tasks.order.len() >= TASK_CAPACITY {
            if let Some(old) = tasks.order.pop_front() {
                tasks.by_id.remove(&old);
            }
        }
        tasks.order.push_back(task.id.clone());
        tasks.by_id.insert(task.id.clone(), Arc::new(task));
    }

    pub fn get(&self, id: &str) -> Option<Arc<Task>> {
        self.lock().by_id.get(id).cloned()
    }

    fn lock(&self) -> MutexGuard<'_, Tasks> {
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

/// `chirp-v3-5` → `v3`, `chirp-auk` → `auk`.
fn major_version(mv: &str) -> &str {
    let rest = mv.strip_prefix("chirp-").unwrap_or(mv);
    rest.split('-')
        .next()
        .filter(|s| !s.is_empty())
        .unwrap_or("v3")
}

/// Up to four words of `source`, or a fixed title.
fn title_from(source: &str) -> String {
    let words: Vec<&str> = source
        .split_whitespace()
        .filter(|w| !w.starts_with('['))
        .take(4)
        .collect();
    if words.is_empty() {
        "Sandbox Song".to_owned()
    } else {
        words.join(" ")
    }
}

/// Deterministic lyrics quoting the start of `source`.
fn lyrics(source: &str) -> String {
    let line: String = source
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .chars()
        .take(60)
        .collect();
    format!("[Verse]\n{line}\nSung by the uniapi sandbox\n\n[Chorus]\nA deterministic song\n{line}")
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` for unix milliseconds.
fn iso8601(unix_ms: u64) -> String {
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
    fn model_version_is_parsed() {
        assert_eq!(major_version("chirp-v3-5"), "v3");
        assert_eq!(major_version("chirp-auk"), "auk");
        assert_eq!(major_version("chirp-v4"), "v4");
    }
}
