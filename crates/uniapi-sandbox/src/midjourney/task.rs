//! Midjourney tasks: what was submitted, and the proxy's Task object (midjourney.md §5) a task shows
//! at a given instant. A task waiting for a modal confirmation (Inpaint, CustomZoom) stays `MODAL`
//! until `/mj/submit/modal` starts its timeline.

use std::sync::{Mutex, PoisonError};
use std::time::Instant;

use serde_json::{Value, json};

use crate::tasks::{Phase, Timeline};
use crate::text::mix;

const MEDIA_BASE: &str = "https://sandbox.invalid/mj";
const FAIL_REASON: &str = "sandbox failure on request";

/// Where a task is: waiting for its modal, or running on a timeline (and whether it fails).
pub enum Run {
    Modal,
    Running { timeline: Timeline, fails: bool },
}

pub struct Task {
    pub id: String,
    /// `IMAGINE`, `UPSCALE`, `VARIATION`, ...
    pub action: &'static str,
    pub custom_id: String,
    pub bot_type: String,
    pub prompt: String,
    pub description: String,
    pub state: String,
    /// `FAST`, `RELAX` or `TURBO`, from `accountFilter.modes`.
    pub mode: String,
    /// The submit time (unix ms), for a task still waiting for its modal.
    pub submit_ms: u64,
    pub seed: u64,
    pub run: Mutex<Run>,
}

impl Task {
    /// The hash its buttons carry (a Discord message hash in the real service).
    pub fn hash(&self) -> String {
        let a = mix(self.seed ^ 0x4D4A);
        format!(
            "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
            a >> 32,
            (a >> 16) & 0xffff,
            a & 0xfff,
            0x8000 | (mix(a) & 0x3fff),
            mix(a) >> 16
        )
    }

    /// The status at `now` (`MODAL`, `SUBMITTED`, `IN_PROGRESS`, `SUCCESS`, `FAILURE`) and the progress.
    pub fn status(&self, now: Instant) -> (&'static str, u64) {
        match &*self.run.lock().unwrap_or_else(PoisonError::into_inner) {
            Run::Modal => ("MODAL", 0),
            Run::Running { timeline, fails } => match timeline.phase(now) {
                Phase::Submitted => ("SUBMITTED", 0),
                Phase::InProgress(pct) => ("IN_PROGRESS", pct),
                Phase::Done if *fails => ("FAILURE", 100),
                Phase::Done => ("SUCCESS", 100),
            },
        }
    }

    /// Confirms a waiting modal: the task starts now. False when it was not waiting.
    pub fn confirm(&self, duration_ms: u64, fails: bool) -> bool {
        let mut run = self.run.lock().unwrap_or_else(PoisonError::into_inner);
        if !matches!(*run, Run::Modal) {
            return false;
        }
        *run = Run::Running {
            timeline: Timeline::start(duration_ms),
            fails,
        };
        true
    }

    /// The buttons of a finished task (none before success).
    pub fn buttons(&self) -> Vec<Value> {
        let hash = self.hash();
        let button = |custom_id: String, label: &str, emoji: &str| json!({"customId": custom_id, "emoji": emoji, "label": label, "type": 2, "style": 2});
        match self.action {
            "IMAGINE" | "VARIATION" | "LOW_VARIATION" | "HIGH_VARIATION" | "REROLL" | "BLEND"
            | "ZOOM" | "PAN" | "INPAINT" | "CUSTOM_ZOOM" => {
                let mut out: Vec<Value> = (1..=4)
                    .map(|i| {
                        button(
                            format!("MJ::JOB::upsample::{i}::{hash}"),
                            &format!("U{i}"),
                            "",
                        )
                    })
                    .collect();
                out.push(button(
                    format!("MJ::JOB::reroll::0::{hash}::SOLO"),
                    "",
                    "🔄",
                ));
                out.extend((1..=4).map(|i| {
                    button(
                        format!("MJ::JOB::variation::{i}::{hash}"),
                        &format!("V{i}"),
                        "",
                    )
                }));
                out
            }
            "UPSCALE" => vec![
                button(
                    format!("MJ::JOB::low_variation::1::{hash}::SOLO"),
                    "Vary (Subtle)",
                    "🪄",
                ),
                button(
                    format!("MJ::JOB::high_variation::1::{hash}::SOLO"),
                    "Vary (Strong)",
                    "🪄",
                ),
                button(
                    format!("MJ::Inpaint::1::{hash}::SOLO"),
                    "Vary (Region)",
                    "🖌️",
                ),
                button(
                    format!("MJ::Outpaint::50::1::{hash}::SOLO"),
                    "Zoom Out 2x",
                    "🔍",
                ),
                button(format!("MJ::CustomZoom::{hash}"), "Custom Zoom", "🔍"),
                button(format!("MJ::JOB::pan_left::1::{hash}::SOLO"), "", "⬅️"),
                button(format!("MJ::JOB::pan_right::1::{hash}::SOLO"), "", "➡️"),
                button(format!("MJ::JOB::pan_up::1::{hash}::SOLO"), "", "⬆️"),
                button(format!("MJ::JOB::pan_down::1::{hash}::SOLO"), "", "⬇️"),
            ],
            "DESCRIBE" => (1..=4)
                .map(|i| button(format!("MJ::Job::PicReader::{i}"), &i.to_string(), ""))
                .collect(),
            "SHORTEN" => (1..=5)
                .map(|i| button(format!("MJ::JOB::PromptAnalyzer::{i}"), &i.to_string(), ""))
                .collect(),
            _ => Vec::new(),
        }
    }

    /// Four numbered prompts a describe yields.
    fn final_prompt(&self) -> String {
        (1..=4)
            .map(|i| format!("{i}\u{fe0f}\u{20e3} a sandbox picture, take {i} --ar 1:1"))
            .collect::<Vec<_>>()
            .join("\n\n")
    }

    /// The task as `GET /mj/task/{id}/fetch` shows it at `now`.
    pub fn dto(&self, now: Instant) -> Value {
        let (status, pct) = self.status(now);
        let (submit_ms, start_ms, finish_ms) =
            match &*self.run.lock().unwrap_or_else(PoisonError::into_inner) {
                Run::Modal => (self.submit_ms, None, None),
                Run::Running { timeline, .. } => (
                    timeline.submit_ms,
                    (status != "SUBMITTED").then(|| timeline.start_ms()),
                    matches!(status, "SUCCESS" | "FAILURE").then(|| timeline.finish_ms()),
                ),
            };
        let hash = self.hash();
        let image_url = match status {
            "IN_PROGRESS" => format!("{MEDIA_BASE}/preview/{hash}_{pct}.webp"),
            "SUCCESS" if self.action != "DESCRIBE" && self.action != "SHORTEN" => {
                format!("{MEDIA_BASE}/{hash}.png")
            }
            _ => String::new(),
        };
        let final_prompt = match (status, self.action) {
            ("SUCCESS", "DESCRIBE") => self.final_prompt(),
            ("SUCCESS", "SHORTEN") => format!("{} --shortened", self.prompt),
            _ => String::new(),
        };
        let prompt = if final_prompt.is_empty() || self.action != "DESCRIBE" {
            self.prompt.clone()
        } else {
            final_prompt.clone()
        };
        json!({
            "id": self.id,
            "action": self.action,
            "customId": self.custom_id,
            "botType": self.bot_type,
            "prompt": prompt,
            "promptEn": prompt,
            "description": self.description,
            "state": self.state,
            "submitTime": submit_ms,
            "startTime": start_ms,
            "finishTime": finish_ms,
            "imageUrl": image_url,
            "status": status,
            "progress": if status == "MODAL" { String::new() } else { format!("{pct}%") },
            "failReason": if status == "FAILURE" { FAIL_REASON } else { "" },
            "buttons": if status == "SUCCESS" { self.buttons() } else { Vec::new() },
            "maskBase64": "",
            "properties": {
                "finalPrompt": final_prompt,
                "finalZhPrompt": "",
                "discordInstanceId": "1572398367386955776",
                "messageHash": hash,
                "mode": self.mode,
            },
        })
    }
}
