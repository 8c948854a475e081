//! Suno tasks: what was submitted, and the `TaskDto` (suno.md §4.1) a task shows at a given
//! instant. Everything but ids and times is a pure function of the request.

use std::time::Instant;

use serde_json::{Value, json};

use crate::tasks::{Phase, Timeline, iso8601, uuid};
use crate::text::{fnv64, mix};

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
    pub timeline: Timeline,
    pub fails: bool,
    pub seed: u64,
    pub ask: TaskAsk,
}

impl Task {
    /// The task as `GET /suno/fetch/{id}` shows it at `now`.
    pub fn dto(&self, now: Instant) -> Value {
        let phase = self.timeline.phase(now);
        let submit_time = self.timeline.submit_ms / 1000;
        let start_time = match phase {
            Phase::Submitted => 0,
            _ => self.timeline.start_ms() / 1000,
        };
        let finish_time = match phase {
            Phase::Done => self.timeline.finish_ms() / 1000,
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
            "created_at": iso8601(self.timeline.submit_ms),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_version_is_parsed() {
        assert_eq!(major_version("chirp-v3-5"), "v3");
        assert_eq!(major_version("chirp-auk"), "auk");
        assert_eq!(major_version("chirp-v4"), "v4");
    }
}
