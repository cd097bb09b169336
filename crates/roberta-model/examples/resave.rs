//! Loads an HF model directory with this crate and saves it again with this crate:
//! `scripts/check_hf_roundtrip.py` feeds the result to `transformers`.
//!
//!     cargo run --release -p roberta-model --example resave -- IN_DIR OUT_DIR

use std::path::{Path, PathBuf};

use burn::backend::Flex;
use roberta_model::{
    LoadOptions, Pretrained, RobertaConfig, RobertaForMaskedLM, RobertaForQuestionAnswering,
    RobertaForSequenceClassification, RobertaForTokenClassification, RobertaModel, load_pretrained,
    save_pretrained,
};

type B = Flex;

fn resave<M: Pretrained<B>>(input: &Path, output: &Path) -> roberta_model::Result<()> {
    let loaded = load_pretrained::<B, M>(input, LoadOptions::default(), &Default::default())?;
    save_pretrained(&loaded.model, &loaded.config, output)
}

fn main() {
    let args: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    let [input, output] = args.as_slice() else {
        eprintln!("usage: resave IN_DIR OUT_DIR");
        std::process::exit(2);
    };
    let result = RobertaConfig::load(&input.join("config.json")).and_then(|config| {
        let architecture = config.architectures.first().cloned().unwrap_or_default();
        match architecture.as_str() {
            "RobertaForMaskedLM" => resave::<RobertaForMaskedLM<B>>(input, output),
            "RobertaForSequenceClassification" => {
                resave::<RobertaForSequenceClassification<B>>(input, output)
            }
            "RobertaForTokenClassification" => {
                resave::<RobertaForTokenClassification<B>>(input, output)
            }
            "RobertaForQuestionAnswering" => {
                resave::<RobertaForQuestionAnswering<B>>(input, output)
            }
            _ => resave::<RobertaModel<B>>(input, output),
        }
    });
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
