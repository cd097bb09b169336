use super::*;
use crate::tokenizer::train_bpe;

fn repo_tokenizer() -> RobertaTokenizer {
    RobertaTokenizer::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/tokenizer"))
        .unwrap()
}

/// The first `lines` lines of the embedded corpus, as `dir/name`.
fn corpus(dir: &Path, name: &str, lines: usize) -> PathBuf {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/default-corpus/train.txt"),
    )
    .unwrap();
    let path = dir.join(name);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let part: Vec<&str> = text.lines().take(lines).collect();
    std::fs::write(&path, part.join("\n") + "\n").unwrap();
    path
}

fn options(input: &Path) -> PreprocessOptions {
    PreprocessOptions {
        inputs: vec![input.to_path_buf()],
        workers: 2,
        ..Default::default()
    }
}

fn run(tok: &RobertaTokenizer, options: &PreprocessOptions, out: &Path) -> Result<Outcome> {
    preprocess(tok, options, out, false, &|_| {})
}

/// Names in `dir` other than `keep`, sorted.
fn others(dir: &Path, keep: &[&str]) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !keep.contains(&n.as_str()))
        .collect();
    names.sort();
    names
}

#[test]
fn an_output_holding_user_files_is_refused_and_left_alone() {
    let tok = repo_tokenizer();
    let dir = tempfile::tempdir().unwrap();
    // The corpus's own directory as the output.
    let c = dir.path().join("c");
    let input = corpus(&c, "train.txt", 50);
    let before = std::fs::read(&input).unwrap();
    let err = run(&tok, &options(&input), &c).err().unwrap().to_string();
    assert_eq!(
        err,
        format!(
            "{} holds files that preprocess did not write (train.txt): choose another --out (data.data_dir when pretraining)",
            c.display()
        )
    );
    assert_eq!(std::fs::read(&input).unwrap(), before);
    assert_eq!(others(dir.path(), &[]), ["c"]);
    // A regular file as the output: neither replaced nor moved aside.
    let file = dir.path().join("notes");
    std::fs::write(&file, "mine").unwrap();
    let err = run(&tok, &options(&input), &file)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("is a file, not a directory"), "{err}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "mine");
    assert_eq!(others(dir.path(), &[]), ["c", "notes"]);
    // A directory with a meta.json that is not ours.
    let odd = dir.path().join("odd");
    std::fs::create_dir(&odd).unwrap();
    std::fs::write(odd.join(META_FILE), "{\"name\": \"mine\"}").unwrap();
    let err = run(&tok, &options(&input), &odd).err().unwrap().to_string();
    assert!(
        err.contains("did not write") && err.contains("odd"),
        "{err}"
    );
    assert_eq!(others(&odd, &[]), [META_FILE]);
}

#[test]
fn an_empty_directory_is_filled_and_its_own_output_replaced() {
    let tok = repo_tokenizer();
    let dir = tempfile::tempdir().unwrap();
    let input = corpus(dir.path(), "train.txt", 200);
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    assert!(matches!(
        run(&tok, &options(&input), &out).unwrap(),
        Outcome::Written(_)
    ));
    assert!(matches!(
        run(&tok, &options(&input), &out).unwrap(),
        Outcome::UpToDate(_)
    ));
    let mut changed = options(&input);
    changed.shard_tokens = 500;
    let Outcome::Rebuilt { meta, why } = run(&tok, &changed, &out).unwrap() else {
        panic!("changed options rebuild");
    };
    assert_eq!(why, "the preprocessing options changed");
    assert!(meta.splits["train"].shards.len() > 1);
    assert_eq!(Meta::read(&out).unwrap(), meta);
    assert_eq!(others(dir.path(), &[]), ["out", "train.txt"]);
    // A user's file inside our output: still up to date, but never deleted.
    std::fs::write(out.join("NOTES.md"), "mine").unwrap();
    assert!(matches!(
        run(&tok, &changed, &out).unwrap(),
        Outcome::UpToDate(_)
    ));
    let err = run(&tok, &options(&input), &out).err().unwrap().to_string();
    assert!(err.contains("did not write (NOTES.md)"), "{err}");
    assert_eq!(Meta::read(&out).unwrap(), meta);
    assert_eq!(
        std::fs::read_to_string(out.join("NOTES.md")).unwrap(),
        "mine"
    );
}

#[test]
fn another_tokenizer_is_refused_unless_forced() {
    let tok = repo_tokenizer();
    let dir = tempfile::tempdir().unwrap();
    let input = corpus(dir.path(), "train.txt", 200);
    let other = train_bpe(std::slice::from_ref(&input), 300, 2).unwrap();
    let out = dir.path().join("out");
    run(&tok, &options(&input), &out).unwrap();
    let before = Meta::read(&out).unwrap();
    let err = run(&other, &options(&input), &out)
        .err()
        .unwrap()
        .to_string();
    let (a, b) = (tokenizer_sha256(&tok), tokenizer_sha256(&other));
    assert!(
        err.starts_with(&out.display().to_string())
            && err.contains(&a[..12])
            && err.contains(&b[..12])
            && err.contains("--force"),
        "{err}"
    );
    assert_eq!(Meta::read(&out).unwrap(), before);
    let Outcome::Rebuilt { meta, .. } =
        preprocess(&other, &options(&input), &out, true, &|_| {}).unwrap()
    else {
        panic!("--force rebuilds");
    };
    assert_eq!(meta.tokenizer_sha256, b);
}

#[test]
fn a_stop_request_leaves_the_output_as_it_was() {
    let tok = repo_tokenizer();
    let dir = tempfile::tempdir().unwrap();
    // About ten chunks, so that the stop lands in the middle.
    let input = corpus(dir.path(), "train.txt", usize::MAX);
    let out = dir.path().join("out");
    let stop = Arc::new(AtomicBool::new(false));
    let mut stoppable = options(&input);
    stoppable.stop = Some(stop.clone());
    let chunks = std::sync::atomic::AtomicUsize::new(0);
    let stop_after_one = |_: Progress| {
        chunks.fetch_add(1, Ordering::Relaxed);
        stop.store(true, Ordering::Relaxed);
    };
    let err = preprocess(&tok, &stoppable, &out, false, &stop_after_one)
        .err()
        .unwrap();
    assert!(matches!(err, DataError::Interrupted { .. }), "{err}");
    assert_eq!(
        err.to_string(),
        format!("interrupted: nothing written to {}", out.display())
    );
    assert!(chunks.load(Ordering::Relaxed) < 4, "stopped promptly");
    assert_eq!(others(dir.path(), &[]), ["train.txt"]);

    // Interrupting a rebuild keeps the previous output.
    let small = corpus(dir.path(), "small.txt", 100);
    run(&tok, &options(&small), &out).unwrap();
    let before = Meta::read(&out).unwrap();
    stop.store(false, Ordering::Relaxed);
    stoppable.inputs = vec![input];
    let err = preprocess(&tok, &stoppable, &out, false, &stop_after_one)
        .err()
        .unwrap();
    assert!(matches!(err, DataError::Interrupted { .. }), "{err}");
    assert_eq!(Meta::read(&out).unwrap(), before);
    assert_eq!(others(dir.path(), &[]), ["out", "small.txt", "train.txt"]);
}

#[cfg(unix)]
#[test]
fn an_output_inside_an_input_directory_is_refused() {
    let tok = repo_tokenizer();
    let dir = tempfile::tempdir().unwrap();
    let cin = dir.path().join("cin");
    corpus(&cin, "train.txt", 100);
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&cin, &link).unwrap();
    for out in [
        cin.join("bin"),
        cin.join("new/deeper/bin"),
        cin.join("new/../bin"),
        link.join("bin"),
        dir.path().join("elsewhere/../cin/bin"),
    ] {
        let err = run(&tok, &options(&cin), &out).err().unwrap();
        assert!(matches!(err, DataError::OutputInInput { .. }), "{err}");
        assert_eq!(
            err.to_string(),
            format!(
                "{} lies inside the input directory {}: a later run would read its shards back as corpus text; choose another --out (data.data_dir when pretraining), outside every input",
                out.display(),
                cin.display()
            )
        );
    }
    // Held-out directories count too.
    let mut with_valid = options(&cin.join("train.txt"));
    let held = dir.path().join("held");
    corpus(&held, "valid.txt", 20);
    with_valid.valid = vec![held.clone()];
    let err = run(&tok, &with_valid, &held.join("bin")).err().unwrap();
    assert!(matches!(err, DataError::OutputInInput { .. }), "{err}");
    assert_eq!(others(&cin, &[]), ["train.txt"]);
    assert_eq!(others(&held, &[]), ["valid.txt"]);
    assert_eq!(others(dir.path(), &[]), ["cin", "held", "link"]);

    // A file of the output as an input: its own meta.json read as text.
    let out = dir.path().join("out");
    run(&tok, &options(&cin), &out).unwrap();
    let before = Meta::read(&out).unwrap();
    let mut again = options(&cin);
    again.inputs.push(out.join(META_FILE));
    let err = run(&tok, &again, &out).err().unwrap();
    assert!(matches!(err, DataError::InputInOutput { .. }), "{err}");
    assert!(
        err.to_string().contains("meta.json lies inside the output"),
        "{err}"
    );
    assert_eq!(Meta::read(&out).unwrap(), before);
    // Beside the inputs is fine, and so is a name that merely starts like one.
    run(&tok, &options(&cin), &dir.path().join("cin-bin")).unwrap();
}

#[test]
fn a_second_process_on_one_output_is_refused_naming_the_first() {
    let tok = repo_tokenizer();
    let dir = tempfile::tempdir().unwrap();
    let input = corpus(dir.path(), "train.txt", 50);
    let out = dir.path().join("out");
    // A lock is held per open file: a second open conflicts, as another process's.
    let held = OutputLock::acquire(dir.path(), "out", &out).unwrap();
    let err = run(&tok, &options(&input), &out).err().unwrap();
    assert!(matches!(err, DataError::InUse { .. }), "{err}");
    assert!(
        err.to_string().contains(&format!(
            "another roberta-train (PID {})",
            std::process::id()
        )),
        "{err}"
    );
    drop(held);
    run(&tok, &options(&input), &out).unwrap();
    assert_eq!(others(dir.path(), &[]), ["out", "train.txt"]);
}

#[test]
fn zero_tokens_per_shard_is_refused() {
    let tok = repo_tokenizer();
    let dir = tempfile::tempdir().unwrap();
    let input = corpus(dir.path(), "train.txt", 50);
    let mut zero = options(&input);
    zero.shard_tokens = 0;
    let err = run(&tok, &zero, &dir.path().join("out")).err().unwrap();
    assert_eq!(
        err.to_string(),
        "--shard-tokens 0: a shard holds at least 1 token; give at least 1"
    );
    assert_eq!(others(dir.path(), &[]), ["train.txt"]);
    zero.shard_tokens = 1;
    let Outcome::Written(meta) = run(&tok, &zero, &dir.path().join("out")).unwrap() else {
        panic!("written");
    };
    assert_eq!(
        meta.splits["train"].shards.len() as u64,
        meta.splits["train"].documents
    );
}

#[cfg(target_os = "linux")]
#[test]
fn temporaries_of_dead_runs_are_removed_and_others_kept() {
    // Above any pid_max Linux allows (2^22), so never a live process.
    const DEAD: u32 = (1 << 22) + 1;
    let tok = repo_tokenizer();
    let dir = tempfile::tempdir().unwrap();
    let input = corpus(dir.path(), "train.txt", 100);
    let out = dir.path().join("out");
    let make = |name: &str| {
        std::fs::create_dir(dir.path().join(name)).unwrap();
        for file in [
            "train-00000.bin",
            "train-00001.idx.sentences.tmp",
            META_FILE,
        ] {
            std::fs::write(dir.path().join(name).join(file), "x").unwrap();
        }
    };
    let dead = format!(".out.tmp-{DEAD}");
    let kept = [
        ".out.tmp-1".to_string(),
        ".out.tmp-12x".into(),
        format!(".other.tmp-{DEAD}"),
        format!(".outer.tmp-{DEAD}"),
        // Our names, of dead runs, but holding what preprocess never writes.
        format!(".out.tmp-{}", DEAD + 1),
        format!(".out.tmp-{}", DEAD + 2),
        format!(".out.old-{}", DEAD + 3),
    ];
    for name in kept.iter().chain([&dead]) {
        make(name);
    }
    let foreign = [
        (format!(".out.tmp-{}", DEAD + 1), "thesis.tex"),
        (format!(".out.tmp-{}", DEAD + 2), "train-0.bin"),
    ];
    for (name, file) in &foreign {
        std::fs::write(dir.path().join(name).join(file), "mine").unwrap();
    }
    std::fs::create_dir(dir.path().join(format!(".out.old-{}/sub", DEAD + 3))).unwrap();
    std::fs::write(dir.path().join(format!(".out.old-{DEAD}")), "a file").unwrap();
    run(&tok, &options(&input), &out).unwrap();
    let mut expected: Vec<String> = kept.to_vec();
    expected.extend([format!(".out.old-{DEAD}"), "out".into(), "train.txt".into()]);
    expected.sort();
    assert_eq!(others(dir.path(), &[]), expected);
    for (name, file) in &foreign {
        let kept = dir.path().join(name);
        assert_eq!(std::fs::read_to_string(kept.join(file)).unwrap(), "mine");
        assert!(kept.join("train-00000.bin").exists());
    }

    // A run killed between moving its old output aside and renaming the new one
    // into place: the old output goes back.
    let before = Meta::read(&out).unwrap();
    let aside = dir.path().join(format!(".out.old-{DEAD}0"));
    std::fs::rename(&out, &aside).unwrap();
    make(&dead);
    assert!(matches!(
        run(&tok, &options(&input), &out).unwrap(),
        Outcome::UpToDate(_)
    ));
    assert_eq!(Meta::read(&out).unwrap(), before);
    assert!(!aside.exists() && !dir.path().join(&dead).exists());
}
