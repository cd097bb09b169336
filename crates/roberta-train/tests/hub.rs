//! Hub names read from an HF cache laid out as `huggingface_hub` lays it out (blobs,
//! refs, snapshots of relative symlinks), built here from the MLM fixture: nothing is
//! downloaded.

use std::path::Path;
use std::process::{Command, Output};

mod common;

use common::{fails, mlm_fixture, ok, repo, s};

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

/// `cache/models--test-org--tiny-roberta` at `COMMIT`, which `refs/main` and `refs/v1`
/// name.
fn make_cache(cache: &Path) {
    let repository = cache.join("models--test-org--tiny-roberta");
    let snapshot = repository.join("snapshots").join(COMMIT);
    std::fs::create_dir_all(&snapshot).unwrap();
    std::fs::create_dir_all(repository.join("blobs")).unwrap();
    std::fs::create_dir_all(repository.join("refs")).unwrap();
    for (i, entry) in std::fs::read_dir(mlm_fixture()).unwrap().enumerate() {
        let file = entry.unwrap().path();
        let name = file.file_name().unwrap();
        if name == "expected.safetensors" {
            continue;
        }
        let blob = format!("blob{i:04}");
        std::fs::copy(&file, repository.join("blobs").join(&blob)).unwrap();
        std::os::unix::fs::symlink(Path::new("../../blobs").join(&blob), snapshot.join(name))
            .unwrap();
    }
    for tag in ["main", "v1"] {
        std::fs::write(repository.join("refs").join(tag), COMMIT).unwrap();
    }
}

fn run_with(env: &[(&str, &str)], args: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_roberta-train"));
    command.args(args).current_dir(repo());
    for var in ["HF_HUB_CACHE", "HF_HOME", "HF_HUB_OFFLINE", "HF_ENDPOINT"] {
        command.env_remove(var);
    }
    command.envs(env.iter().copied()).output().unwrap()
}

fn fill(model: &str, env: &[(&str, &str)]) -> Output {
    run_with(env, &["fill-mask", "--model", model, "Hello <mask> world"])
}

#[test]
fn a_hub_name_reads_the_hf_cache_at_any_revision() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("hub");
    make_cache(&cache);
    let expected = ok(&fill(&mlm_fixture(), &[]));
    let offline = [("HF_HUB_CACHE", s(&cache)), ("HF_HUB_OFFLINE", "1")];
    for name in [
        "test-org/tiny-roberta",
        "test-org/tiny-roberta@v1",
        &format!("test-org/tiny-roberta@{COMMIT}"),
    ] {
        assert_eq!(ok(&fill(name, &offline)), expected, "{name}");
    }
    // HF_HOME's hub/ is the cache when HF_HUB_CACHE is not set.
    let home = [("HF_HOME", s(dir.path())), ("HF_HUB_OFFLINE", "1")];
    assert_eq!(ok(&fill("test-org/tiny-roberta", &home)), expected);

    let err = fails(&fill("test-org/tiny-roberta@v2", &offline));
    assert!(err.contains("at revision v2"), "{err}");
    let err = fails(&fill("test-org/absent", &offline));
    assert!(
        err.contains("test-org/absent: no such directory")
            && err.contains(&format!("{}/models--test-org--absent", cache.display()))
            && err.contains("HF_HUB_OFFLINE"),
        "{err}"
    );
    // Online, a name absent from the cache is downloaded; an unreachable hub says so.
    let unreachable = [
        ("HF_HUB_CACHE", s(&cache)),
        ("HF_ENDPOINT", "http://127.0.0.1:9"),
    ];
    let err = fails(&fill("test-org/absent", &unreachable));
    assert!(
        err.contains("not in the HF cache") && err.contains("downloading it failed"),
        "{err}"
    );
}

/// `finetune --init NAME` starts from the cached model.
#[test]
fn finetune_starts_from_a_hub_name() {
    let Some(sst2) = common::shared("sst2") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("hub");
    make_cache(&cache);
    let train = common::head(&sst2.join("train.tsv"), 17, &dir.path().join("train.tsv"));
    let config =
        common::finetune_config(dir.path(), "type = \"classification\"", &train, &train, "");
    let run_dir = dir.path().join("run");
    let out = run_with(
        &[("HF_HUB_CACHE", s(&cache)), ("HF_HUB_OFFLINE", "1")],
        &[
            "finetune",
            "--config",
            s(&config),
            "--init",
            "test-org/tiny-roberta",
            "--run-dir",
            s(&run_dir),
            "--set",
            "train.max_steps=1",
        ],
    );
    ok(&out);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        log.contains(&format!("test-org/tiny-roberta is {}", cache.display())),
        "{log}"
    );
    assert!(run_dir.join("final/model.safetensors").exists());
}
