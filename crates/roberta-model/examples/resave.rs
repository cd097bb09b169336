//! Loads an HF model directory with this crate and saves it again with this crate:
//! `scripts/check_hf_roundtrip.py` feeds the result to `transformers`.
//!
//!     cargo run --release -p roberta-model --example resave -- IN_DIR OUT_DIR

use std::path::{Path, PathBuf};

use burn::backend::Flex;
use burn::prelude::Module;
use roberta_model::{
    LoadOptions, Pretrained, RobertaConfig, RobertaModel, WithArchitecture, load_pretrained,
    save_pretrained, with_architecture,
};

type B = Flex;

struct Resave<'a> {
    input: &'a Path,
    output: &'a Path,
}

impl WithArchitecture<B> for Resave<'_> {
    type Output = roberta_model::Result<()>;
    fn run<M: Pretrained<B> + Module<B>>(self) -> Self::Output {
        let loaded =
            load_pretrained::<B, M>(self.input, LoadOptions::default(), &Default::default())?;
        save_pretrained(&loaded.model, &loaded.config, self.output)
    }
}

fn main() {
    let args: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    let [input, output] = args.as_slice() else {
        eprintln!("usage: resave IN_DIR OUT_DIR");
        std::process::exit(2);
    };
    let result = RobertaConfig::load(&input.join("config.json")).and_then(|config| {
        let architecture = config.architectures.first().cloned().unwrap_or_default();
        let resave = Resave { input, output };
        // A directory that names no head this crate knows is read as the bare encoder.
        with_architecture(&architecture, resave)
            .unwrap_or_else(|| Resave { input, output }.run::<RobertaModel<B>>())
    });
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
