use roberta_data::MaskingConfig;

use super::*;
use crate::tasks::TaskSection;

const MINIMAL: &str = r#"
[model]
preset = "tiny"
[data]
train = ["a.txt"]
data_dir = "bin"
tokenizer = "tok"
block_size = 64
[schedule]
warmup_steps = 10
total_steps = 100
[train]
batch_size = 4
"#;

fn load(text: &str, sets: &[&str]) -> Result<PretrainConfig> {
    load_warned(text, sets).map(|(c, _)| c)
}

fn load_warned(text: &str, sets: &[&str]) -> Result<(PretrainConfig, Vec<String>)> {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("c.toml");
    std::fs::write(&p, text).unwrap();
    PretrainConfig::load(&p, &sets.iter().map(|s| s.to_string()).collect::<Vec<_>>())
}

#[test]
fn every_shipped_config_is_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let (_, warnings) = PretrainConfig::load(&path, &[])
                .unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
            assert!(warnings.is_empty(), "{}: {warnings:?}", path.display());
            seen += 1;
        }
    }
    assert_eq!(seen, 5);
    let (phases, _) = PretrainConfig::load(&dir.join("bert-phases.toml"), &[]).unwrap();
    let plans = phases.phases();
    assert_eq!(
        plans
            .iter()
            .map(|p| (p.until_step, p.block_size, p.batch_size * p.block_size))
            .collect::<Vec<_>>(),
        [(720, 64, 4096), (800, 128, 4096)],
        "90% of the updates at half the length, the same tokens per update"
    );
    let (base, _) = PretrainConfig::load(&dir.join("roberta-base.toml"), &[]).unwrap();
    assert_eq!(
        base.train.batch_size * base.train.accumulation,
        8192,
        "8K sequences per update"
    );
    let (large, _) = PretrainConfig::load(&dir.join("roberta-large.toml"), &[]).unwrap();
    assert_eq!(large.train.batch_size * large.train.accumulation, 8192);
    assert_eq!((large.optim.lr, large.schedule.warmup_steps), (4e-4, 30000));
}

#[test]
fn phases_fill_in_the_config_and_bad_ones_are_named() {
    let phase = |body: &str| format!("{MINIMAL}[[schedule.phases]]\n{body}\n");
    let c = load(
        &phase("until_step = 90\nblock_size = 32\nmask_prob = 0.3"),
        &[],
    )
    .unwrap();
    let plans = c.phases();
    assert_eq!(plans.len(), 2);
    assert_eq!(
        (plans[0].block_size, plans[0].batch_size, plans[0].mask_prob),
        (32, 4, 0.3)
    );
    assert_eq!((plans[1].until_step, plans[1].block_size), (100, 64));
    let ends = load(&phase("until_step = 100\nblock_size = 32"), &[]).unwrap();
    assert_eq!(
        ends.phases().len(),
        1,
        "no base phase after one ending the run"
    );
    for (body, expected) in [
        (
            "until_step = 0",
            "schedule.phases[0].until_step = 0 must come after",
        ),
        ("until_step = 101", "is past schedule.total_steps = 100"),
        (
            "until_step = 50\nblock_size = 128",
            "above data.block_size = 64",
        ),
        (
            "until_step = 50\nblock_size = 7",
            "schedule.phases[0].block_size",
        ),
        (
            "until_step = 50\nbatch_size = 0",
            "schedule.phases[0].batch_size must be at least 1",
        ),
        (
            "until_step = 50\nmask_prob = 1.0",
            "schedule.phases[0].mask_prob = 1 must be in (0, 1)",
        ),
        (
            "until_step = 50\n[[schedule.phases]]\nuntil_step = 40",
            "schedule.phases[1].until_step = 40 must come after the previous phase's end (50)",
        ),
    ] {
        let err = format!("{:#}", load(&phase(body), &[]).unwrap_err());
        assert!(err.contains(expected), "{body}: {err}");
    }
    for (sets, expected) in [
        (
            &["schedule.mask_prob_end=1.5"][..],
            "schedule.mask_prob_end = 1.5 must be in (0, 1)",
        ),
        (
            &[
                "schedule.batch_warmup_steps=10",
                "schedule.batch_warmup_start=2",
            ],
            "the first phase takes 1",
        ),
        (
            &[
                "train.accumulation=2",
                "schedule.batch_warmup_steps=10",
                "schedule.batch_warmup_start=8",
            ],
            "schedule.batch_warmup_start = 8 must be in [1, 8)",
        ),
        (
            &["schedule.mask_prob_shape=\"cosine\""],
            "without schedule.mask_prob_end",
        ),
        (
            &["schedule.batch_warmup_start=2"],
            "without schedule.batch_warmup_steps",
        ),
        (&["schedule.mask_prob_shape=\"square\""], "mask_prob_shape"),
    ] {
        let err = format!("{:#}", load(MINIMAL, sets).unwrap_err());
        assert!(err.contains(expected), "{sets:?}: {err}");
    }
}

#[test]
fn learning_rate_cycles_hold_their_warmups_and_copied_positions_need_a_fresh_model() {
    let phase = |body: &str| format!("{MINIMAL}[[schedule.phases]]\n{body}\n");
    let c = load(
        &phase("until_step = 50\n[[schedule.phases]]\nuntil_step = 100\nwarmup_steps = 50"),
        &["schedule.extend_positions=\"copy\""],
    )
    .unwrap();
    assert_eq!(c.phases()[1].warmup_steps, Some(50));
    for (body, sets, expected) in [
        (
            "until_step = 50\nwarmup_steps = 5",
            &[][..],
            "schedule.phases[0].warmup_steps: the first phase's warmup is schedule.warmup_steps",
        ),
        (
            "until_step = 50\n[[schedule.phases]]\nuntil_step = 100\nwarmup_steps = 51",
            &[],
            "schedule.phases[1].warmup_steps = 51 is longer than its learning-rate cycle, updates 51 to 100",
        ),
        (
            "until_step = 5\n[[schedule.phases]]\nuntil_step = 100\nwarmup_steps = 0",
            &[],
            "schedule.warmup_steps = 10 is longer than its learning-rate cycle, updates 1 to 5",
        ),
        (
            "until_step = 50",
            &["schedule.extend_positions=\"interpolate\""],
            "extend_positions",
        ),
        (
            "until_step = 50",
            &["schedule.extend_positions=\"copy\"", "model.init=\"m\""],
            "schedule.extend_positions = \"copy\" overwrites the positions no phase of this run reached",
        ),
    ] {
        let err = format!("{:#}", load(&phase(body), sets).unwrap_err());
        assert!(err.contains(expected), "{body} {sets:?}: {err}");
    }
}

#[test]
fn every_shipped_finetune_config_is_valid_with_the_papers_recipe() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/finetune");
    let mut names = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let (c, warnings) = FinetuneConfig::load(&path, &[])
            .unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
        assert!(warnings.is_empty(), "{}: {warnings:?}", path.display());
        assert!((1e-5..=3e-5).contains(&c.optim.lr), "{}", path.display());
        assert_eq!((c.optim.beta2, c.optim.eps), (0.98, 1e-6));
        assert!((c.train.warmup_ratio - 0.06).abs() < 1e-12);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains("../shared"), "{}", path.display());
        if !c.data.train.exists() {
            let err = c.check_data_files().unwrap_err().to_string();
            assert!(err.contains("--set data.train=PATH"), "{err}");
        }
        names.push(path.file_stem().unwrap().to_string_lossy().into_owned());
    }
    names.sort();
    assert_eq!(
        names,
        ["cola", "mrpc", "rte", "squad", "sst2", "stsb", "swag"]
    );
}

#[test]
fn finetune_defaults_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("f.toml");
    std::fs::write(
        &p,
        "[task]\ntype = \"classification\"\n[data]\ntrain = \"t.tsv\"\n",
    )
    .unwrap();
    let (c, _) = FinetuneConfig::load(&p, &[]).unwrap();
    assert_eq!((c.optim.lr, c.optim.weight_decay), (1e-5, 0.1));
    assert_eq!(c.train.seed, 0, "the same default seed as pretraining");
    assert_eq!((c.train.epochs, c.train.batch_size), (10, 32));
    assert_eq!(c.metric(), "accuracy");
    let err = format!(
        "{:#}",
        FinetuneConfig::load(&p, &["eval.metric=pearson".into()]).unwrap_err()
    );
    assert!(err.contains("eval.metric") && err.contains("mcc"), "{err}");
    let err = format!(
        "{:#}",
        FinetuneConfig::load(&p, &["task.type=ner".into()]).unwrap_err()
    );
    assert!(err.contains("ner"), "{err}");
    let err = format!(
        "{:#}",
        FinetuneConfig::load(&p, &["task.text_b=x".into()]).unwrap_err()
    );
    assert!(err.contains("text_b"), "{err}");
}

#[test]
fn defaults_are_the_papers() {
    let c = load(MINIMAL, &[]).unwrap();
    assert_eq!(
        (c.optim.beta2, c.optim.eps, c.optim.weight_decay),
        (0.98, 1e-6, 0.01)
    );
    assert_eq!(c.masking, MaskingConfig::default());
    assert_eq!(c.model_config(500).max_position_embeddings, 66);
}

#[test]
fn unknown_keys_and_bad_values_are_named() {
    let err = format!(
        "{:#}",
        load(
            &MINIMAL.replace("batch_size = 4", "batch_size = 4\nbatchsize = 2"),
            &[]
        )
        .unwrap_err()
    );
    assert!(err.contains("batchsize"), "{err}");
    let err = format!("{:#}", load(MINIMAL, &["optim.lr=2"]).unwrap_err());
    assert!(err.contains("optim.lr"), "{err}");
    let err = format!("{:#}", load(MINIMAL, &["masking.mask_prob=0"]).unwrap_err());
    assert!(err.contains("mask_prob"), "{err}");
    let err = format!(
        "{:#}",
        load(MINIMAL, &["schedule.warmup_steps=1000"]).unwrap_err()
    );
    assert!(err.contains("warmup_steps"), "{err}");
}

#[test]
fn set_overrides_numbers_strings_and_lists() {
    let c = load(
        MINIMAL,
        &[
            "train.batch_size=8",
            "data.train=mine.txt",
            "model.preset=roberta-base",
        ],
    )
    .unwrap();
    assert_eq!(c.train.batch_size, 8);
    assert_eq!(c.data.train, vec![PathBuf::from("mine.txt")]);
    assert_eq!(c.model.preset, "roberta-base");
    assert!(load(MINIMAL, &["nodot=1"]).is_err());
}

#[test]
fn exactness_changes_are_listed_and_harmless_ones_are_not() {
    let a = load(MINIMAL, &[]).unwrap();
    let mut b = a.clone();
    b.schedule.total_steps = 1000;
    b.log.every = 1;
    assert!(b.exactness_changes(&a).is_empty());
    b.train.seed = 9;
    b.model.hidden_size = Some(256);
    assert_eq!(
        b.exactness_changes(&a),
        ["model.hidden_size: (unset) → 256", "train.seed: 0 → 9"]
    );
}

#[test]
fn type_errors_name_the_key_and_the_line_or_the_set() {
    let bad = MINIMAL.replace("batch_size = 4", "batch_size = \"four\"");
    let err = format!("{:#}", load(&bad, &[]).unwrap_err());
    assert!(err.contains(":13: train.batch_size: invalid type"), "{err}");
    let err = format!(
        "{:#}",
        load(MINIMAL, &["train.batch_size=abc"]).unwrap_err()
    );
    assert!(
        err.starts_with("--set train.batch_size=abc: invalid type"),
        "{err}"
    );
    let err = format!("{:#}", load(MINIMAL, &["train.batchsize=3"]).unwrap_err());
    assert!(
        err.starts_with("--set train.batchsize=3: unknown field"),
        "{err}"
    );
    // The hostile campaign's: each once blamed the config file.
    for (set, says) in [
        ("nonexistent.key=1", "unknown field `nonexistent`"),
        (".=1", "the key must be section.key"),
        ("data.train=[ok, 5]", "not a TOML value"),
        (
            "schedule.total_steps=18446744073709551616",
            "the number is too large",
        ),
        ("train.batch_size=0", "train.batch_size"),
    ] {
        let err = format!("{:#}", load(MINIMAL, &[set]).unwrap_err());
        assert!(
            err.starts_with(&format!("--set {set}: ")) && err.contains(says),
            "{err}"
        );
    }
    let typo = MINIMAL.replace("batch_size = 4", "batch_size = 4\nbatchsize = 2");
    let err = format!("{:#}", load(&typo, &[]).unwrap_err());
    assert!(
        err.contains(":14: train.batchsize: unknown field `batchsize`"),
        "{err}"
    );
}

#[test]
fn range_and_syntax_errors_are_one_line_and_blame_their_source() {
    let err = format!("{:#}", load(MINIMAL, &["optim.lr=nan"]).unwrap_err());
    assert!(err.starts_with("--set optim.lr=nan: optim.lr"), "{err}");
    let err = format!("{:#}", load(MINIMAL, &["optim.clip_norm=nan"]).unwrap_err());
    assert!(err.contains("optim.clip_norm"), "{err}");
    let err = format!(
        "{:#}",
        load(
            MINIMAL,
            &["schedule.total_steps=2", "schedule.total_steps=-1"]
        )
        .unwrap_err()
    );
    assert!(err.starts_with("--set schedule.total_steps=-1"), "{err}");
    let err = format!(
        "{:#}",
        load(&MINIMAL.replace("= 4", "= [4"), &[]).unwrap_err()
    );
    assert!(
        err.contains(":13: invalid TOML") && !err.contains('\n'),
        "{err}"
    );
}

#[test]
fn deprecated_names_are_read_with_a_warning() {
    let old = MINIMAL.to_string() + "[log]\nevery = 5\nvalid_every = 7\n";
    let (c, warnings) = load_warned(&old, &["log.valid_batches=3"]).unwrap();
    assert_eq!((c.log.every, c.eval.every, c.eval.batches), (5, 7, 3));
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    assert!(warnings[0].contains("log.valid_every") && warnings[0].contains("eval.every"));
    let both = old + "[eval]\nevery = 2\n";
    let err = format!("{:#}", load(&both, &[]).unwrap_err());
    assert!(err.contains("keep eval.every"), "{err}");
    // A checkpoint's config.toml of an earlier release still reads.
    let dir = tempfile::tempdir().unwrap();
    let saved = dir.path().join("config.toml");
    std::fs::write(&saved, MINIMAL.to_string() + "[log]\nvalid_every = 7\n").unwrap();
    assert_eq!(PretrainConfig::from_saved(&saved).unwrap().eval.every, 7);
}

/// The keys serde reads for `T`, as its derived `Deserialize` names them.
fn serde_fields<T: serde::de::DeserializeOwned>() -> &'static [&'static str] {
    use serde::de::{Error, Visitor, value};
    struct Fields(Option<&'static [&'static str]>);
    impl<'de> serde::Deserializer<'de> for &mut Fields {
        type Error = value::Error;
        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, value::Error> {
            Err(value::Error::custom("not a struct"))
        }
        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, value::Error> {
            self.0 = Some(fields);
            Err(value::Error::custom("fields captured"))
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
            byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map enum
            identifier ignored_any
        }
    }
    let mut fields = Fields(None);
    let _ = T::deserialize(&mut fields);
    fields.0.expect("a struct")
}

/// Every key of every section is either kept on resume or free to change, never both:
/// a new or renamed field fails here until it is classified.
#[test]
fn every_section_key_is_kept_or_free_on_resume() {
    fn check<T: ResumeRule + serde::de::DeserializeOwned>(section: &str) {
        let fields = serde_fields::<T>();
        for key in T::KEPT.iter().chain(T::FREE) {
            assert!(
                fields.contains(key),
                "{section}.{key} is not a key of the section"
            );
        }
        for key in fields {
            assert!(
                T::KEPT.contains(key) != T::FREE.contains(key),
                "{section}.{key} must be in exactly one of KEPT and FREE"
            );
        }
    }
    check::<ModelSection>("model");
    check::<DataSection>("data");
    check::<MaskingConfig>("masking");
    check::<OptimSection>("optim");
    check::<ScheduleSection>("schedule");
    check::<TrainSection>("train");
    check::<PretrainEvalSection>("eval");
    check::<CheckpointSection>("checkpoint");
    check::<LogSection>("log");
    check::<TaskSection>("task");
    check::<FinetuneDataSection>("data");
    check::<FinetuneModelSection>("model");
    check::<FinetuneTrainSection>("train");
    check::<FinetuneEvalSection>("eval");
}
