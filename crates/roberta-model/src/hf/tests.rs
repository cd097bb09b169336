use super::*;

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
