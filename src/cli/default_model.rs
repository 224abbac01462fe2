//! The default model (models/scenes-git), built into the binary so that `glimpse caption` and
//! `glimpse ask` work with no `--model` and no download. See models/scenes-git/README.md.

use std::collections::BTreeMap;

use glimpse::pipeline::ModelFiles;

macro_rules! model_file {
    ($name:literal) => {
        include_bytes!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/models/scenes-git/",
            $name
        ))
    };
}

pub fn files() -> ModelFiles {
    let meta: BTreeMap<String, Vec<u8>> = [
        ("config.json", &model_file!("config.json")[..]),
        (
            "generation_config.json",
            &model_file!("generation_config.json")[..],
        ),
        (
            "preprocessor_config.json",
            &model_file!("preprocessor_config.json")[..],
        ),
        ("tokenizer.json", &model_file!("tokenizer.json")[..]),
    ]
    .into_iter()
    .map(|(n, b)| (n.to_string(), b.to_vec()))
    .collect();
    ModelFiles {
        meta,
        weights: vec![(
            "model.safetensors".into(),
            model_file!("model.safetensors").to_vec(),
        )],
        index: None,
    }
}
