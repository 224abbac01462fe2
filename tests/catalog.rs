//! The catalog tells the truth (issue 10): every file a Hugging Face entry lists exists on that
//! repo's main (tests/hub/inventory.json, itself checked against SOURCES.md), the weight file
//! is model.safetensors where main has it and pytorch_model.bin where it has not, exact sizes
//! and sha256 sums agree with what we hold of the repo, and tests/hub/configs is the shared copy.

use std::path::{Path, PathBuf};

use sha2::Digest;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

fn json(p: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

/// "2.82 kB" -> 2820 (the hub's listings count in powers of ten).
fn parse_size(s: &str) -> f64 {
    let (n, unit) = s.split_once(' ').unwrap();
    let n: f64 = n.parse().unwrap();
    n * match unit {
        "B" => 1.0,
        "kB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        u => panic!("unit {u}"),
    }
}

fn sha256(b: &[u8]) -> String {
    sha2::Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

/// The repo's section of SOURCES.md: from its "## N. owner/name" heading to the next, or, for a
/// repo of the lower-priority list, its "* **owner/name**" bullet up to the next bullet.
fn section<'a>(sources: &'a str, repo: &str) -> &'a str {
    if let Some(start) = sources.find(&format!(". {repo}")) {
        let rest = &sources[start..];
        let end = rest[1..].find("\n## ").map_or(rest.len(), |e| e + 1);
        return &rest[..end];
    }
    let start = sources
        .find(&format!("* **{repo}**"))
        .unwrap_or_else(|| panic!("SOURCES.md has no section for {repo}"));
    let rest = &sources[start..];
    let end = rest[1..]
        .find("\n* ")
        .or_else(|| rest[1..].find("\n## "))
        .map_or(rest.len(), |e| e + 1);
    &rest[..end]
}

#[test]
fn the_inventory_is_what_sources_md_says() {
    let inv = json(&root().join("tests/hub/inventory.json"));
    let sources = std::fs::read_to_string(root().join("tests/hub/configs/SOURCES.md")).unwrap();
    for (repo, entry) in inv.as_object().unwrap() {
        if repo == "note" {
            continue;
        }
        let text = section(&sources, repo);
        for (file, size) in entry["files"].as_object().unwrap() {
            assert!(
                text.contains(file.as_str()),
                "{repo}: SOURCES.md never names {file}"
            );
            match size {
                serde_json::Value::String(s) => {
                    assert!(
                        text.contains(&format!("{file} {s}")),
                        "{repo}: SOURCES.md does not list {file} at {s}"
                    )
                }
                serde_json::Value::Number(n) => {
                    // in the repo's section, or in the table of the files copied here
                    let n = n.to_string();
                    let dir = entry["dir"].as_str().unwrap();
                    let table = sources.lines().any(|l| {
                        l.contains(&format!("| {n} |"))
                            && l.contains(dir)
                            && l.contains(file.as_str())
                    });
                    assert!(
                        text.contains(&n) || table,
                        "{repo}: SOURCES.md does not give {file} as {n} bytes"
                    )
                }
                _ => {}
            }
        }
        if let Some(shas) = entry.get("sha256") {
            for (file, sha) in shas.as_object().unwrap() {
                assert!(
                    text.contains(sha.as_str().unwrap()),
                    "{repo}: {file}'s sha256 is not in SOURCES.md"
                );
            }
        }
        let no_safetensors = !entry["files"]
            .as_object()
            .unwrap()
            .contains_key("model.safetensors");
        if no_safetensors {
            let lower = text.to_lowercase();
            assert!(
                lower.contains("no model.safetensors") || lower.contains("no safetensors"),
                "{repo}: SOURCES.md does not say main lacks model.safetensors"
            );
        }
    }
}

#[test]
fn every_catalog_file_exists_on_the_repos_main_with_its_size() {
    let catalog = json(&root().join("models/catalog.json"));
    let inv = json(&root().join("tests/hub/inventory.json"));
    let mut checked = 0;
    for m in catalog["models"].as_array().unwrap() {
        let Some(repo) = m["repo"].as_str() else {
            continue;
        };
        let entry = &inv[repo];
        let files = entry["files"]
            .as_object()
            .unwrap_or_else(|| panic!("{repo} is not in tests/hub/inventory.json"));
        let dir = root()
            .join("tests/hub/configs")
            .join(entry["dir"].as_str().unwrap());
        let listed: Vec<&str> = m["files"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["name"].as_str().unwrap())
            .collect();
        // the weights: safetensors where main has them, else the PyTorch file
        let want_weights = if files.contains_key("model.safetensors") {
            "model.safetensors"
        } else {
            "pytorch_model.bin"
        };
        let weights: Vec<&&str> = listed
            .iter()
            .filter(|n| n.ends_with(".safetensors") || n.ends_with(".bin"))
            .collect();
        assert_eq!(weights, vec![&want_weights], "{repo}: weight files");
        // generation_config.json is listed exactly when the repo has one
        assert_eq!(
            listed.contains(&"generation_config.json"),
            files.contains_key("generation_config.json"),
            "{repo}: generation_config.json"
        );
        for f in m["files"].as_array().unwrap() {
            let name = f["name"].as_str().unwrap();
            let size = files
                .get(name)
                .unwrap_or_else(|| panic!("{repo} has no {name} on main"));
            assert_eq!(
                f["url"].as_str().unwrap(),
                format!("https://huggingface.co/{repo}/resolve/main/{name}"),
                "{repo}/{name}: url"
            );
            match size {
                serde_json::Value::Number(n) => {
                    assert_eq!(f["bytes"].as_u64(), n.as_u64(), "{repo}/{name}: exact size");
                }
                serde_json::Value::String(s) => {
                    assert!(
                        f.get("bytes").is_none(),
                        "{repo}/{name}: only a rounded size is known"
                    );
                    let approx = f["approx_bytes"].as_f64().unwrap();
                    let listed = parse_size(s);
                    assert!(
                        (approx - listed).abs() <= listed * 0.01,
                        "{repo}/{name}: {approx} vs {s}"
                    );
                }
                _ => assert!(f.get("bytes").is_none(), "{repo}/{name}: no size is known"),
            }
            // a sha256 only where the bytes are known: a verbatim copy here, or a weight file's LFS oid
            if let Some(sha) = f["sha256"].as_str() {
                let copy = dir.join(name);
                if copy.exists() {
                    let b = std::fs::read(&copy).unwrap();
                    assert_eq!(
                        sha256(&b),
                        sha,
                        "{repo}/{name}: sha256 of the verbatim copy"
                    );
                    assert_eq!(
                        f["bytes"].as_u64(),
                        Some(b.len() as u64),
                        "{repo}/{name}: size of the copy"
                    );
                } else {
                    assert_eq!(
                        entry["sha256"][name].as_str(),
                        Some(sha),
                        "{repo}/{name}: sha256"
                    );
                }
            }
            checked += 1;
        }
    }
    assert!(checked >= 24, "{checked} files checked");
}

#[test]
fn the_hub_configs_here_are_the_shared_ones() {
    // CI may not have the shared folder beside the checkout; where it is, the copy must match
    let shared = root().join("../shared/hub-configs");
    if !shared.exists() {
        return;
    }
    fn walk(a: &Path, b: &Path) {
        for e in std::fs::read_dir(a).unwrap() {
            let e = e.unwrap();
            let (pa, pb) = (e.path(), b.join(e.file_name()));
            if pa.is_dir() {
                walk(&pa, &pb);
            } else {
                assert_eq!(
                    std::fs::read(&pa).unwrap(),
                    std::fs::read(&pb).unwrap(),
                    "{}",
                    pb.display()
                );
            }
        }
    }
    walk(&shared, &root().join("tests/hub/configs"));
}
