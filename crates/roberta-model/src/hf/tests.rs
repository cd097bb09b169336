use super::*;

#[test]
fn a_dead_writers_temporary_is_removed_and_a_live_ones_kept() {
    let dir = tempfile::tempdir().unwrap();
    let dead = dir.path().join(".out.bin.tmp-4194303");
    let live = dir.path().join(".out.bin.tmp-1");
    let other = dir.path().join(".other.bin.tmp-4194303");
    for p in [&dead, &live, &other] {
        std::fs::write(p, "partial").unwrap();
    }
    write_new(&dir.path().join("out.bin"), b"done").unwrap();
    assert!(!dead.exists(), "no process 4194303: its temporary goes");
    assert!(live.exists(), "process 1 is alive: its temporary stays");
    assert!(
        other.exists(),
        "another file's temporary is not this write's"
    );
}

#[test]
fn write_new_never_replaces_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.json");
    write_new(&path, b"first").unwrap();
    let err = write_new(&path, b"second").unwrap_err().to_string();
    assert!(err.contains("was not replaced"), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), b"first");
    let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(names.len(), 1, "no temporary left");
}

fn file_with(dir: &Path, tensors: &[(&str, Dtype, Vec<u8>)]) -> PathBuf {
    let views = tensors.iter().map(|(key, dtype, bytes)| {
        let width = match dtype {
            Dtype::I64 => 8,
            _ => 4,
        };
        let view = TensorView::new(*dtype, vec![bytes.len() / width], bytes).unwrap();
        (key.to_string(), view)
    });
    let path = dir.join(WEIGHTS_FILE);
    std::fs::write(&path, safetensors::serialize(views, None).unwrap()).unwrap();
    path
}

#[test]
fn integer_tensors_are_known_as_such() {
    let dir = tempfile::tempdir().unwrap();
    let buffer = ("embeddings.position_ids", Dtype::I64, vec![0u8; 16]);
    let weight = (
        "embeddings.word_embeddings.weight",
        Dtype::I32,
        vec![0u8; 8],
    );
    let floats = ("embeddings.LayerNorm.weight", Dtype::F32, vec![0u8; 8]);
    let weights = HfWeights::read(&file_with(dir.path(), &[buffer, weight, floats])).unwrap();
    assert!(weights.is_integer("embeddings.position_ids"));
    assert!(weights.is_integer("embeddings.word_embeddings.weight"));
    assert!(!weights.is_integer("embeddings.LayerNorm.weight"));
}
