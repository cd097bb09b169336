//! Models by hub name (`roberta-base`, `FacebookAI/roberta-large`, `org/name@revision`)
//! wherever a model directory is taken. They are read from the HF cache as
//! `huggingface_hub` lays it out (`models--org--name/refs/REV` → `snapshots/COMMIT/`), so
//! the files are the ones Python users already have; missing ones are downloaded into
//! that same cache by hf-hub, HF's Rust client, unless `HF_HUB_OFFLINE=1`.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use roberta_model::hf::{CONFIG_FILE, PYTORCH_WEIGHTS_FILE, WEIGHTS_FILE, has_weights};

/// A model repository on the hub and the revision asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubName {
    /// `name` or `org/name`.
    pub id: String,
    /// A branch, a tag or a commit; `main` unless `@revision` says otherwise.
    pub revision: String,
}

impl HubName {
    /// `name`, `org/name`, either with `@revision`; `None` for anything that can only be
    /// a path (absolute, `./`, `~`, more than one `/`, characters the hub refuses).
    pub fn parse(text: &str) -> Option<Self> {
        // A revision is a branch, tag or commit; branches may hold `/` (`refs/pr/1`), never
        // `..`: it names a file under the repository's refs/.
        let (id, revision) = match text.split_once('@') {
            Some((id, revision))
                if !revision.is_empty()
                    && !revision.starts_with(['/', '.'])
                    && !revision.contains("..")
                    && revision.chars().all(|c| {
                        c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/')
                    }) =>
            {
                (id, revision)
            }
            Some(_) => return None,
            None => (text, "main"),
        };
        let parts: Vec<&str> = id.split('/').collect();
        let valid = |part: &&str| {
            !part.is_empty()
                && !part.starts_with(['.', '-'])
                && !part.ends_with('.')
                && !part.contains("--")
                && !part.contains("..")
                && part
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        };
        (parts.len() <= 2 && parts.iter().all(valid)).then(|| Self {
            id: id.to_string(),
            revision: revision.to_string(),
        })
    }

    /// The repositories that may hold it: the id itself, and for a legacy id without an
    /// organisation (`roberta-base`) its canonical home under `FacebookAI/`.
    fn repositories(&self) -> Vec<String> {
        let mut ids = vec![self.id.clone()];
        if !self.id.contains('/') {
            ids.push(format!("FacebookAI/{}", self.id));
        }
        ids
    }
}

/// The hub cache, as `huggingface_hub` finds it: `HF_HUB_CACHE`, else `HF_HOME/hub`, else
/// `XDG_CACHE_HOME/huggingface/hub`, else `~/.cache/huggingface/hub`.
pub fn cache_dir() -> PathBuf {
    let var = |name: &str| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(cache) = var("HF_HUB_CACHE") {
        return cache;
    }
    if let Some(home) = var("HF_HOME") {
        return home.join("hub");
    }
    let base = var("XDG_CACHE_HOME")
        .or_else(|| var("HOME").map(|home| home.join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"));
    base.join("huggingface").join("hub")
}

/// `models--org--name`: where the cache keeps a repository.
fn repository_dir(cache: &Path, id: &str) -> PathBuf {
    cache.join(format!("models--{}", id.replace('/', "--")))
}

/// The cached snapshot of `id` at `revision` (a ref, or a commit), if it holds a
/// config and weights.
fn cached_snapshot(cache: &Path, id: &str, revision: &str) -> Option<PathBuf> {
    let repository = repository_dir(cache, id);
    let is_commit = revision.len() == 40 && revision.chars().all(|c| c.is_ascii_hexdigit());
    let commit = if is_commit {
        revision.to_string()
    } else {
        let commit = std::fs::read_to_string(repository.join("refs").join(revision)).ok()?;
        let commit = commit.trim();
        if commit.len() != 40 || !commit.chars().all(|c| c.is_ascii_hexdigit()) {
            tracing::warn!(
                "{}: not a commit hash; ignoring this cache entry",
                repository.join("refs").join(revision).display()
            );
            return None;
        }
        commit.to_string()
    };
    let snapshot = repository.join("snapshots").join(commit);
    (snapshot.join(CONFIG_FILE).is_file() && has_weights(&snapshot)).then_some(snapshot)
}

fn offline() -> bool {
    std::env::var("HF_HUB_OFFLINE")
        .is_ok_and(|v| matches!(v.trim(), "1" | "true" | "ON" | "on" | "yes"))
}

/// `path` itself when it exists (or cannot be a hub name); else the HF cache's snapshot
/// of that name, downloaded first when it is not there and downloading is allowed.
pub fn resolve(path: &Path) -> Result<PathBuf> {
    if path.exists() {
        return Ok(path.to_path_buf());
    }
    let Some(name) = path.to_str().and_then(HubName::parse) else {
        return Ok(path.to_path_buf());
    };
    let cache = cache_dir();
    let repositories = name.repositories();
    if let Some(snapshot) = repositories
        .iter()
        .find_map(|id| cached_snapshot(&cache, id, &name.revision))
    {
        tracing::info!("{} is {}", path.display(), snapshot.display());
        return Ok(snapshot);
    }
    let looked = format!(
        "{}: no such directory, and not in the HF cache ({} at revision {})",
        path.display(),
        repositories
            .iter()
            .map(|id| repository_dir(&cache, id).display().to_string())
            .collect::<Vec<_>>()
            .join(" or "),
        name.revision
    );
    if offline() {
        bail!("{looked}; HF_HUB_OFFLINE is set, so nothing is downloaded");
    }
    download(&cache, &name).map_err(|e| anyhow::anyhow!("{looked}; downloading it failed: {e}"))
}

/// The files of an HF model directory, fetched into `cache` by hf-hub: the config, the
/// weights (safetensors, else the PyTorch pickle) and the tokenizer's files when the
/// repository has them.
fn download(cache: &Path, name: &HubName) -> Result<PathBuf> {
    use hf_hub::api::sync::ApiBuilder;
    use hf_hub::{Cache, Repo, RepoType};
    let mut builder = ApiBuilder::from_cache(Cache::new(cache.to_path_buf()))
        .with_progress(crate::run::progress::on_terminal());
    if let Ok(endpoint) = std::env::var("HF_ENDPOINT") {
        builder = builder.with_endpoint(endpoint);
    }
    let api = builder.build()?;
    let repo = api.repo(Repo::with_revision(
        name.id.clone(),
        RepoType::Model,
        name.revision.clone(),
    ));
    tracing::info!(
        "downloading {}@{} into {}",
        name.id,
        name.revision,
        cache.display()
    );
    let config = repo.get(CONFIG_FILE)?;
    if repo.get(WEIGHTS_FILE).is_err() {
        repo.get(PYTORCH_WEIGHTS_FILE)?;
    }
    if repo.get("tokenizer.json").is_err() {
        for file in ["vocab.json", "merges.txt"] {
            if let Err(e) = repo.get(file) {
                tracing::warn!("{}: no tokenizer file {file} ({e})", name.id);
            }
        }
    }
    let _ = repo.get("tokenizer_config.json");
    Ok(config
        .parent()
        .map_or_else(|| cache.to_path_buf(), Path::to_path_buf))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_names_and_paths_are_told_apart() {
        let name = |id: &str, revision: &str| {
            Some(HubName {
                id: id.into(),
                revision: revision.into(),
            })
        };
        assert_eq!(HubName::parse("roberta-base"), name("roberta-base", "main"));
        assert_eq!(
            HubName::parse("FacebookAI/roberta-large@v1.0"),
            name("FacebookAI/roberta-large", "v1.0")
        );
        for path in [
            "/abs/model",
            "./model",
            "../model",
            "runs/sst2/final",
            "~/m",
            "a--b",
            "a@",
            "",
            "a b",
            "org/tiny@../../models--org--tiny/refs/main",
            "org/tiny@/etc",
        ] {
            assert_eq!(HubName::parse(path), None, "{path}");
        }
        assert_eq!(
            HubName::parse("roberta-base").unwrap().repositories(),
            ["roberta-base", "FacebookAI/roberta-base"]
        );
    }
}
