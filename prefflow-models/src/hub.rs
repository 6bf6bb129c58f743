//! The one Hugging Face Hub client prefflow builds, for datasets and models alike: HF_ENDPOINT,
//! HF_HOME and HF_TOKEN (or the cached login token) are honoured; no progress bars (a model's
//! large files get a [`DownloadLine`]).

use std::path::PathBuf;

use hf_hub::Cache;
use hf_hub::api::tokio::{Api, ApiBuilder, ApiError};

/// A Hub client configured from the environment.
pub fn api() -> Result<Api, ApiError> {
    let mut builder = ApiBuilder::from_env()
        .with_progress(false)
        .with_token(token());
    if let Ok(home) = std::env::var("HF_HOME") {
        builder = builder.with_cache_dir(PathBuf::from(home).join("hub"));
    }
    builder.build()
}

/// The Hub cache the client uses (HF_HOME/hub, else hf-hub's default).
pub fn cache() -> Cache {
    match std::env::var("HF_HOME") {
        Ok(home) => Cache::new(PathBuf::from(home).join("hub")),
        Err(_) => Cache::from_env(),
    }
}

/// The Hub token: HF_TOKEN, else the cached login token (hf-hub reads only the latter). Spaces
/// and a newline around it (`export HF_TOKEN=$(cat token.txt)`) are not part of it.
pub fn token() -> Option<String> {
    std::env::var("HF_TOKEN")
        .ok()
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
        .or_else(|| Cache::from_env().token().map(|t| t.trim().to_string()))
}

/// A Hub client's error (hf-hub 0.4's for downloads, 1.0's for pushes) as one line with its
/// causes, each said once. The token is sent only in a request header, but a server's error
/// body may echo the headers, so every form of it is masked here.
pub fn describe(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !msg.contains(&text) {
            msg.push_str(": ");
            msg.push_str(&text);
        }
        source = s.source();
    }
    let tokens: Vec<String> = std::env::var("HF_TOKEN")
        .ok()
        .into_iter()
        .chain(Cache::from_env().token())
        .collect();
    super::secrets::mask(&msg, &tokens)
}

/// A download's progress line on stderr, for multi-gigabyte checkpoints: bytes so far, the
/// total and the rate, at most every two seconds and once when the file is complete (files
/// under 8 MiB say nothing). hf-hub resumes an interrupted download from its `.sync.part`
/// file, so a second CREATE MODEL continues where the first stopped.
#[derive(Clone)]
pub struct DownloadLine {
    state: std::sync::Arc<std::sync::Mutex<LineState>>,
}

struct LineState {
    label: String,
    file: String,
    total: usize,
    done: usize,
    started: std::time::Instant,
    said: Option<std::time::Instant>,
}

/// Files smaller than this download without a line.
const QUIET_BELOW: usize = 8 << 20;

impl DownloadLine {
    /// A line for `label` (the model and address, never a token).
    pub fn new(label: &str) -> Self {
        Self {
            state: std::sync::Arc::new(std::sync::Mutex::new(LineState {
                label: label.to_string(),
                file: String::new(),
                total: 0,
                done: 0,
                started: std::time::Instant::now(),
                said: None,
            })),
        }
    }

    fn tick(&self, at: std::time::Instant, finished: bool) -> Option<String> {
        let mut s = self.state.lock().expect("progress lock");
        if s.total < QUIET_BELOW {
            return None;
        }
        let due = s
            .said
            .is_none_or(|t| at.duration_since(t) >= std::time::Duration::from_secs(2));
        if !finished && !due {
            return None;
        }
        s.said = Some(at);
        Some(progress_text(
            &s.label,
            &s.file,
            s.done,
            s.total,
            at.duration_since(s.started).as_secs_f64(),
        ))
    }
}

/// `label: file 1.2 GB of 4.9 GB (24%), 35.0 MB/s`.
pub fn progress_text(label: &str, file: &str, done: usize, total: usize, seconds: f64) -> String {
    let gb = |b: usize| {
        let b = b as f64;
        if b >= 1e9 {
            format!("{:.1} GB", b / 1e9)
        } else {
            format!("{:.0} MB", b / 1e6)
        }
    };
    let rate = if seconds > 0.0 {
        done as f64 / seconds / 1e6
    } else {
        0.0
    };
    format!(
        "{label}: {file} {} of {} ({}%), {rate:.1} MB/s",
        gb(done),
        gb(total),
        (done as f64 * 100.0 / total.max(1) as f64).floor()
    )
}

impl hf_hub::api::tokio::Progress for DownloadLine {
    async fn init(&mut self, size: usize, filename: &str) {
        let mut s = self.state.lock().expect("progress lock");
        s.file = filename.to_string();
        s.total = size;
        s.done = 0;
        s.started = std::time::Instant::now();
        s.said = None;
    }

    async fn update(&mut self, size: usize) {
        self.state.lock().expect("progress lock").done += size;
        if let Some(line) = self.tick(std::time::Instant::now(), false) {
            eprintln!("{line}");
        }
    }

    async fn finish(&mut self) {
        if let Some(line) = self.tick(std::time::Instant::now(), true) {
            eprintln!("{line}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A line every two seconds at most and one at the end; small files say nothing.
    #[test]
    fn download_lines_are_spaced_and_small_files_are_quiet() {
        let line = DownloadLine::new("CREATE MODEL m");
        let t0 = std::time::Instant::now();
        {
            let mut s = line.state.lock().unwrap();
            s.file = "model.safetensors".into();
            s.total = 4_900_000_000;
            s.done = 1_200_000_000;
            s.started = t0;
        }
        let first = line.tick(t0 + std::time::Duration::from_secs(1), false);
        assert!(first.is_some());
        assert_eq!(
            line.tick(t0 + std::time::Duration::from_millis(1500), false),
            None
        );
        assert!(
            line.tick(t0 + std::time::Duration::from_millis(3100), false)
                .is_some()
        );
        assert!(
            line.tick(t0 + std::time::Duration::from_millis(3200), true)
                .is_some()
        );
        assert_eq!(
            progress_text(
                "CREATE MODEL m",
                "model.safetensors",
                1_200_000_000,
                4_900_000_000,
                10.0
            ),
            "CREATE MODEL m: model.safetensors 1.2 GB of 4.9 GB (24%), 120.0 MB/s"
        );
        let small = DownloadLine::new("m");
        small.state.lock().unwrap().total = 1000;
        assert_eq!(small.tick(t0, true), None);
    }
}
