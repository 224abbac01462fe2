//! Scores a captioning / VQA model on synthetic scenes ([`crate::scenes`]): caption exact match
//! and token F1, VQA accuracy per question type. `tools/train_scenes.py` scores PyTorch the same
//! way on the same scenes (written by `glimpse scenes`), and [`agreement`] compares the two
//! prediction lists item by item.

use std::collections::BTreeMap;

use crate::error::{Error, Result};
use crate::generate::GenerateOptions;
use crate::pipeline::{Pipeline, Task};
use crate::scenes::Scene;

/// One prediction: the caption of a scene (`kind` "caption", no question) or one answer.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Item {
    pub seed: u64,
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub question: Option<String>,
    pub expected: String,
    pub predicted: String,
}

/// Right and total per question type.
#[derive(Debug, Clone, Copy, Default, serde::Serialize, serde::Deserialize)]
pub struct Tally {
    pub right: usize,
    pub total: usize,
}

impl Tally {
    pub fn accuracy(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            self.right as f64 / self.total as f64
        }
    }
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Report {
    pub scenes: usize,
    pub caption_exact: f64,
    pub caption_f1: f64,
    pub vqa_accuracy: f64,
    pub vqa_per_type: BTreeMap<String, Tally>,
    pub items: Vec<Item>,
}

/// Token F1 of a predicted caption against the expected one (whitespace tokens, counts clipped),
/// as the PyTorch script computes it.
pub fn token_f1(predicted: &str, expected: &str) -> f64 {
    let p: Vec<&str> = predicted.split_whitespace().collect();
    let g: Vec<&str> = expected.split_whitespace().collect();
    let mut words = g.clone();
    words.sort_unstable();
    words.dedup();
    let common: usize = words
        .iter()
        .map(|w| {
            let (a, b) = (
                p.iter().filter(|x| *x == w).count(),
                g.iter().filter(|x| *x == w).count(),
            );
            a.min(b)
        })
        .sum();
    if common == 0 {
        0.0
    } else {
        2.0 * common as f64 / (p.len() + g.len()) as f64
    }
}

/// The metrics of a list of predictions.
pub fn score(items: Vec<Item>) -> Report {
    let mut scenes = std::collections::BTreeSet::new();
    let (mut exact, mut f1, mut captions) = (0usize, 0.0f64, 0usize);
    let mut per_type: BTreeMap<String, Tally> = BTreeMap::new();
    for it in &items {
        scenes.insert(it.seed);
        if it.kind == "caption" {
            captions += 1;
            exact += (it.predicted == it.expected) as usize;
            f1 += token_f1(&it.predicted, &it.expected);
        } else {
            let t = per_type.entry(it.kind.clone()).or_default();
            t.total += 1;
            t.right += (it.predicted == it.expected) as usize;
        }
    }
    let right: usize = per_type.values().map(|t| t.right).sum();
    let total: usize = per_type.values().map(|t| t.total).sum();
    let div = |a: f64, b: usize| if b == 0 { 0.0 } else { a / b as f64 };
    Report {
        scenes: scenes.len(),
        caption_exact: div(exact as f64, captions),
        caption_f1: div(f1, captions),
        vqa_accuracy: div(right as f64, total),
        vqa_per_type: per_type,
        items,
    }
}

/// Captions and asks every question of scenes `seed..seed + count` (greedy), with `size`×`size`
/// images that go through PNG like the files `glimpse scenes` writes. `progress(done, count)`
/// is called after each scene.
pub async fn evaluate(
    p: &Pipeline,
    seed: u64,
    count: u64,
    size: usize,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Report> {
    if p.task() != Task::Caption {
        return Err(Error::Invalid(format!(
            "{} does not caption and answer (eval needs a GIT-style model)",
            p.architecture()
        )));
    }
    let greedy = GenerateOptions {
        num_beams: 1,
        do_sample: false,
        ..p.default_options()
    };
    let caption_opts = GenerateOptions {
        max_new_tokens: 30,
        ..greedy.clone()
    };
    let answer_opts = GenerateOptions {
        max_new_tokens: 3,
        ..greedy
    };
    let mut items = Vec::new();
    for (done, s) in (seed..seed + count).enumerate() {
        let scene = Scene::generate(s, size);
        let image = p.prepare_image(&scene.png()?)?;
        let caption = p
            .caption(&image, None, &caption_opts, &mut |_| true)
            .await?;
        items.push(Item {
            seed: s,
            kind: "caption".into(),
            question: None,
            expected: scene.caption(),
            predicted: caption.text,
        });
        for qa in scene.questions() {
            let answer = p
                .ask(&image, &qa.question, &answer_opts, &mut |_| true)
                .await?;
            items.push(Item {
                seed: s,
                kind: qa.kind.into(),
                question: Some(qa.question),
                expected: qa.answer,
                predicted: answer.text,
            });
        }
        progress(done as u64 + 1, count);
    }
    Ok(score(items))
}

/// The share of items on which two prediction lists agree, matched by (seed, kind, question);
/// items only one list has count as disagreements. Returns (agreeing, compared).
pub fn agreement(a: &[Item], b: &[Item]) -> (usize, usize) {
    let key = |i: &Item| (i.seed, i.kind.clone(), i.question.clone());
    let other: std::collections::HashMap<_, _> = b.iter().map(|i| (key(i), &i.predicted)).collect();
    let same = a
        .iter()
        .filter(|i| other.get(&key(i)) == Some(&&i.predicted))
        .count();
    (same, a.len().max(b.len()))
}

/// The report as a table: one column per named report.
pub fn format_table(columns: &[(&str, &Report)]) -> String {
    let mut rows: Vec<(String, Vec<String>)> = vec![
        (
            "scenes".into(),
            columns.iter().map(|(_, r)| r.scenes.to_string()).collect(),
        ),
        (
            "caption exact match".into(),
            columns
                .iter()
                .map(|(_, r)| format!("{:.1}%", 100.0 * r.caption_exact))
                .collect(),
        ),
        (
            "caption token F1".into(),
            columns
                .iter()
                .map(|(_, r)| format!("{:.3}", r.caption_f1))
                .collect(),
        ),
        (
            "VQA accuracy".into(),
            columns
                .iter()
                .map(|(_, r)| format!("{:.1}%", 100.0 * r.vqa_accuracy))
                .collect(),
        ),
    ];
    let mut kinds: Vec<&String> = columns
        .iter()
        .flat_map(|(_, r)| r.vqa_per_type.keys())
        .collect();
    kinds.sort();
    kinds.dedup();
    for k in kinds {
        rows.push((
            format!("  {k}"),
            columns
                .iter()
                .map(|(_, r)| {
                    r.vqa_per_type.get(k).map_or("-".into(), |t| {
                        format!("{:.1}% of {}", 100.0 * t.accuracy(), t.total)
                    })
                })
                .collect(),
        ));
    }
    let w0 = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns.len())
        .map(|c| {
            rows.iter()
                .map(|r| r.1[c].len())
                .chain([columns[c].0.len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = format!("{:<w0$}", "");
    for (c, (name, _)) in columns.iter().enumerate() {
        out += &format!("  {:>w$}", name, w = widths[c]);
    }
    out.push('\n');
    for (label, cells) in rows {
        out += &format!("{label:<w0$}");
        for (c, cell) in cells.iter().enumerate() {
            out += &format!("  {:>w$}", cell, w = widths[c]);
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(seed: u64, kind: &str, expected: &str, predicted: &str) -> Item {
        Item {
            seed,
            kind: kind.into(),
            question: (kind != "caption").then(|| format!("q {kind}")),
            expected: expected.into(),
            predicted: predicted.into(),
        }
    }

    #[test]
    fn token_f1_clips_repeated_words() {
        assert_eq!(token_f1("a red circle", "a red circle"), 1.0);
        assert_eq!(token_f1("", "a red circle"), 0.0);
        // "a a a" shares one "a" with "a red circle": precision 1/3, recall 1/3
        assert!((token_f1("a a a", "a red circle") - 1.0 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn scores_and_agreement_count_each_item() {
        let items = vec![
            item(1, "caption", "a red circle", "a red circle"),
            item(1, "color", "red", "red"),
            item(2, "caption", "a blue star", "a blue ring"),
            item(2, "color", "blue", "green"),
            item(2, "count", "one", "one"),
        ];
        let r = score(items.clone());
        assert_eq!(r.scenes, 2);
        assert_eq!(r.caption_exact, 0.5);
        assert!((r.vqa_accuracy - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(r.vqa_per_type["color"].right, 1);
        let mut other = items.clone();
        other[3].predicted = "blue".into();
        other.pop();
        assert_eq!(agreement(&items, &other), (3, 5));
        let table = format_table(&[("cpu", &r)]);
        assert!(table.contains("50.0%"), "{table}");
    }
}
