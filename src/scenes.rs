//! Synthetic scenes for the embedded default model (issue 4): a deterministic generator used by
//! training, evaluation, tests and the page's "sample scene" button, so that all of them agree.
//!
//! A scene is 1–4 objects (shape, color, size) in distinct cells of a 3×3 grid over a plain or
//! noisy background. From it come a canonical caption and question–answer pairs of six types.

use crate::rng::Rng;

pub const SHAPES: &[&str] = &["circle", "square", "triangle", "star", "ring"];
pub const COLORS: &[(&str, [u8; 3])] = &[
    ("red", [220, 40, 40]),
    ("green", [40, 170, 60]),
    ("blue", [40, 80, 220]),
    ("yellow", [235, 210, 40]),
    ("purple", [140, 60, 180]),
    ("orange", [245, 140, 30]),
    ("white", [245, 245, 245]),
    ("black", [20, 20, 20]),
];
const GRID: usize = 3;
const NUMBERS: &[&str] = &["zero", "one", "two", "three", "four"];

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Object {
    pub shape: &'static str,
    pub color: &'static str,
    pub large: bool,
    /// grid cell (column, row), 0..3 each
    pub cell: (usize, usize),
}

impl Object {
    fn words(&self) -> String {
        format!(
            "{} {} {}",
            if self.large { "large" } else { "small" },
            self.color,
            self.shape
        )
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Scene {
    pub seed: u64,
    pub size: usize,
    /// background color and noise amplitude (0 = plain)
    pub background: [u8; 3],
    pub noise: u8,
    /// objects from left to right (then top to bottom)
    pub objects: Vec<Object>,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Qa {
    pub kind: &'static str,
    pub question: String,
    pub answer: String,
}

impl Scene {
    /// The scene of `seed`, `size`×`size` pixels (64–96 fits the default model).
    pub fn generate(seed: u64, size: usize) -> Scene {
        let mut rng = Rng::new(seed ^ 0x5ce7_e5ce_7e5c_e7e5);
        let pick = |rng: &mut Rng, n: usize| (rng.next_u64() % n as u64) as usize;
        let count = 1 + pick(&mut rng, 4);
        let mut cells: Vec<(usize, usize)> =
            (0..GRID * GRID).map(|i| (i % GRID, i / GRID)).collect();
        let mut objects = Vec::new();
        for _ in 0..count {
            let cell = cells.remove(pick(&mut rng, cells.len()));
            objects.push(Object {
                shape: SHAPES[pick(&mut rng, SHAPES.len())],
                color: COLORS[pick(&mut rng, COLORS.len())].0,
                large: rng.uniform() < 0.5,
                cell,
            });
        }
        objects.sort_by_key(|o| (o.cell.0, o.cell.1));
        // a mid-gray-ish background that every object color stands out from
        let base = 100 + pick(&mut rng, 50) as u8;
        let background = [
            base,
            base + pick(&mut rng, 20) as u8,
            base + pick(&mut rng, 20) as u8,
        ];
        let noise = if rng.uniform() < 0.5 { 0 } else { 12 };
        Scene {
            seed,
            size,
            background,
            noise,
            objects,
        }
    }

    /// The canonical caption: objects left to right, "a large red circle to the left of a small
    /// blue square" (or "… above …" in one column); three or more as "a …, a … and a …".
    pub fn caption(&self) -> String {
        let parts: Vec<String> = self
            .objects
            .iter()
            .map(|o| format!("a {}", o.words()))
            .collect();
        match parts.len() {
            1 => parts[0].clone(),
            2 if self.objects[0].cell.0 < self.objects[1].cell.0 => {
                format!("{} to the left of {}", parts[0], parts[1])
            }
            // same column: sorted top to bottom
            2 => format!("{} above {}", parts[0], parts[1]),
            _ => {
                let (last, rest) = parts.split_last().unwrap_or((&parts[0], &[]));
                format!("{} and {}", rest.join(", "), last)
            }
        }
    }

    fn unique<F: Fn(&Object) -> bool>(&self, f: F) -> Option<&Object> {
        let mut it = self.objects.iter().filter(|o| f(o));
        let first = it.next()?;
        it.next().is_none().then_some(first)
    }

    /// Question–answer pairs; a question is asked only when its answer is unambiguous.
    pub fn questions(&self) -> Vec<Qa> {
        let mut out = Vec::new();
        let mut qa = |kind, question: String, answer: &str| {
            out.push(Qa {
                kind,
                question,
                answer: answer.to_string(),
            })
        };
        for o in &self.objects {
            if self.unique(|x| x.shape == o.shape).is_some() {
                qa("color", format!("what color is the {}?", o.shape), o.color);
                qa(
                    "size",
                    format!("is the {} large or small?", o.shape),
                    if o.large { "large" } else { "small" },
                );
            }
            if self.unique(|x| x.color == o.color).is_some() {
                qa(
                    "shape",
                    format!("what shape is the {} object?", o.color),
                    o.shape,
                );
            }
        }
        qa(
            "count",
            "how many objects are there?".into(),
            NUMBERS[self.objects.len()],
        );
        // existence: one present object, one combination that is absent
        let o = &self.objects[0];
        qa(
            "exist",
            format!("is there a {} {}?", o.color, o.shape),
            "yes",
        );
        'absent: for color in COLORS.iter().map(|c| c.0) {
            for shape in SHAPES {
                if !self
                    .objects
                    .iter()
                    .any(|x| x.color == color && x.shape == *shape)
                {
                    qa("exist", format!("is there a {color} {shape}?"), "no");
                    break 'absent;
                }
            }
        }
        // relative position between the first two objects that differ in column or row
        if let [a, b, ..] = &self.objects[..] {
            let (na, nb) = (
                format!("{} {}", a.color, a.shape),
                format!("{} {}", b.color, b.shape),
            );
            let distinct = self
                .unique(|x| x.color == a.color && x.shape == a.shape)
                .is_some()
                && self
                    .unique(|x| x.color == b.color && x.shape == b.shape)
                    .is_some();
            if distinct {
                let answer = if a.cell.0 != b.cell.0 {
                    if a.cell.0 < b.cell.0 {
                        "left"
                    } else {
                        "right"
                    }
                } else if a.cell.1 < b.cell.1 {
                    "above"
                } else {
                    "below"
                };
                qa(
                    "position",
                    format!("where is the {na} relative to the {nb}?"),
                    answer,
                );
            }
        }
        out
    }

    /// Renders the scene as interleaved RGB8 (4×4 supersampled edges).
    pub fn render(&self) -> Vec<u8> {
        let n = self.size;
        let cell = n as f32 / GRID as f32;
        let mut rng = Rng::new(self.seed);
        let mut img = Vec::with_capacity(n * n * 3);
        for _ in 0..n * n {
            let jitter = if self.noise > 0 {
                (rng.uniform() * 2.0 - 1.0) * self.noise as f32
            } else {
                0.0
            };
            img.extend(
                self.background
                    .map(|c| (c as f32 + jitter).clamp(0.0, 255.0) as u8),
            );
        }
        for o in &self.objects {
            let color = COLORS
                .iter()
                .find(|c| c.0 == o.color)
                .map_or([0, 0, 0], |c| c.1);
            let (cx, cy) = (
                (o.cell.0 as f32 + 0.5) * cell,
                (o.cell.1 as f32 + 0.5) * cell,
            );
            let r = cell * if o.large { 0.42 } else { 0.24 };
            let (x0, x1) = (
                ((cx - r).floor().max(0.0)) as usize,
                ((cx + r).ceil() as usize).min(n),
            );
            let (y0, y1) = (
                ((cy - r).floor().max(0.0)) as usize,
                ((cy + r).ceil() as usize).min(n),
            );
            for y in y0..y1 {
                for x in x0..x1 {
                    let mut hits = 0;
                    for s in 0..16 {
                        let px = x as f32 + (s % 4) as f32 * 0.25 + 0.125 - cx;
                        let py = y as f32 + (s / 4) as f32 * 0.25 + 0.125 - cy;
                        hits += inside(o.shape, px / r, py / r) as u32;
                    }
                    if hits > 0 {
                        let a = hits as f32 / 16.0;
                        let p = &mut img[(y * n + x) * 3..(y * n + x) * 3 + 3];
                        for c in 0..3 {
                            p[c] = (p[c] as f32 * (1.0 - a) + color[c] as f32 * a).round() as u8;
                        }
                    }
                }
            }
        }
        img
    }

    /// PNG bytes of the rendered scene.
    pub fn png(&self) -> crate::Result<Vec<u8>> {
        let img = image::RgbImage::from_raw(self.size as u32, self.size as u32, self.render())
            .ok_or_else(|| crate::Error::Image("scene buffer size".into()))?;
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Png)
            .map_err(|e| crate::Error::Image(e.to_string()))?;
        Ok(out.into_inner())
    }
}

/// Whether the unit-radius shape contains (x, y) (y grows downwards).
fn inside(shape: &str, x: f32, y: f32) -> bool {
    let d = (x * x + y * y).sqrt();
    match shape {
        "circle" => d <= 1.0,
        "ring" => (0.55..=1.0).contains(&d),
        "square" => x.abs() <= 0.8 && y.abs() <= 0.8,
        // apex up: inside when below the two upper edges and above the base
        "triangle" => y <= 0.8 && y >= -1.0 + 1.8 * x.abs() / 0.95 && x.abs() <= 0.95,
        "star" => {
            // five points: radius alternates between 1 and 0.45 with the angle
            let a = y.atan2(x) + std::f32::consts::FRAC_PI_2;
            let k = (a / (2.0 * std::f32::consts::PI / 5.0)).rem_euclid(1.0);
            let edge = 0.45 + 0.55 * (1.0 - 2.0 * (k - 0.5).abs()).powf(1.5);
            d <= edge
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scenes_are_deterministic_and_answers_follow_the_scene() {
        for seed in 0..200 {
            let a = Scene::generate(seed, 64);
            let b = Scene::generate(seed, 64);
            assert_eq!(a.objects, b.objects);
            assert_eq!(a.render(), b.render());
            let qs = a.questions();
            let count = qs.iter().find(|q| q.kind == "count").unwrap();
            assert_eq!(count.answer, NUMBERS[a.objects.len()]);
            for q in qs.iter().filter(|q| q.kind == "color") {
                let shape = q
                    .question
                    .trim_start_matches("what color is the ")
                    .trim_end_matches('?');
                assert_eq!(
                    a.objects.iter().filter(|o| o.shape == shape).count(),
                    1,
                    "ambiguous: {}",
                    q.question
                );
            }
            assert!(!a.caption().is_empty());
        }
    }

    #[test]
    fn every_object_is_drawn_in_its_color_at_its_center() {
        for seed in 0..50 {
            let s = Scene::generate(seed, 96);
            let img = s.render();
            let cell = 96.0 / 3.0;
            for o in &s.objects {
                if o.shape == "ring" {
                    continue; // hollow
                }
                let (x, y) = (
                    ((o.cell.0 as f32 + 0.5) * cell) as usize,
                    ((o.cell.1 as f32 + 0.5) * cell) as usize,
                );
                let want = COLORS.iter().find(|c| c.0 == o.color).unwrap().1;
                assert_eq!(
                    &img[(y * 96 + x) * 3..(y * 96 + x) * 3 + 3],
                    &want,
                    "seed {seed}: {o:?}"
                );
            }
        }
    }
}
