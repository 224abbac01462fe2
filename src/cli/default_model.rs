//! The default model (models/scenes-git), built into the binary so that `glimpse caption` and
//! `glimpse ask` work with no `--model` and no download. See models/scenes-git/README.md.

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
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    ModelFiles {
        config: text(model_file!("config.json")),
        generation_config: Some(text(model_file!("generation_config.json"))),
        preprocessor_config: text(model_file!("preprocessor_config.json")),
        tokenizer: model_file!("tokenizer.json").to_vec(),
        weights: vec![model_file!("model.safetensors").to_vec()],
    }
}
