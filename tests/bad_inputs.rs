//! The bad-input corpus (tests/bad-inputs, made by tools/make_bad_inputs.py) through the CLI,
//! as a person runs it: every case gives its documented error (exit status 1, the message in
//! cases.json, never a panic's 101) or works, and a good request afterwards works. The same
//! corpus goes through the page in tests/browser/bad-corpus.test.mjs.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/bad-inputs")
}

fn cases() -> Value {
    serde_json::from_slice(&std::fs::read(corpus().join("cases.json")).unwrap()).unwrap()
}

fn glimpse(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_glimpse"))
        .args(args)
        .output()
        .unwrap()
}

fn os(s: &str) -> &std::ffi::OsStr {
    std::ffi::OsStr::new(s)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// No panic, no signal: exit status `want` and no Rust panic message.
fn assert_clean_exit(out: &Output, want: i32, what: &str) {
    let err = text(&out.stderr);
    assert!(
        !err.contains("panicked") && !err.contains("RUST_BACKTRACE"),
        "{what}: a panic\n{err}"
    );
    assert_eq!(out.status.code(), Some(want), "{what}\nstderr: {err}");
}

fn regex(p: &str) -> regex::Regex {
    regex::Regex::new(p).unwrap()
}

#[test]
fn every_bad_image_fails_alone_and_the_good_ones_around_it_caption() {
    let c = cases();
    let good = corpus().join(c["good_image"].as_str().unwrap());
    let images = c["images"].as_array().unwrap();
    // one process: the good image, every case, the good image again
    let mut args: Vec<PathBuf> = vec![good.clone()];
    args.extend(
        images
            .iter()
            .map(|i| corpus().join(i["file"].as_str().unwrap())),
    );
    args.push(good.clone());
    let mut argv: Vec<&std::ffi::OsStr> =
        vec![os("caption"), os("--device"), os("cpu"), os("--json")];
    argv.extend(args.iter().map(|p| p.as_os_str()));
    let out = glimpse(&argv);
    let failing = images.iter().filter(|i| i["expect"] != "ok").count();
    assert_clean_exit(&out, 1, "caption of the image corpus");
    let err = text(&out.stderr);
    assert!(
        err.contains(&format!(
            "{failing} of {} images could not be captioned",
            args.len()
        )),
        "{err}"
    );
    let results: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(results.len(), args.len());
    let first = results[0]["caption"].as_str().unwrap();
    assert!(!first.is_empty());
    assert_eq!(
        results[results.len() - 1]["caption"],
        first,
        "the good image after every bad one"
    );
    let mut table = Vec::new();
    for (case, got) in images.iter().zip(&results[1..]) {
        let file = case["file"].as_str().unwrap();
        if case["expect"] == "ok" {
            assert!(
                got["caption"].as_str().is_some_and(|c| !c.is_empty()),
                "{file} should caption: {got}"
            );
            table.push(format!("{file}: ok ({})", got["caption"]));
        } else {
            let (code, msg) = (
                got["code"].as_str().unwrap_or("?"),
                got["error"].as_str().unwrap_or("?"),
            );
            assert_eq!(code, case["code"].as_str().unwrap(), "{file}: {msg}");
            assert!(
                regex(case["error"].as_str().unwrap()).is_match(msg),
                "{file}: {msg}"
            );
            table.push(format!("{file}: {code}: {msg}"));
        }
    }
    println!("{}", table.join("\n"));
}

#[test]
fn every_bad_question_is_its_documented_error_and_odd_ones_are_answered() {
    let c = cases();
    let good = corpus().join(c["good_image"].as_str().unwrap());
    for case in c["prompts"].as_array().unwrap() {
        let Some(q) = case["question"].as_str() else {
            continue; // JS-only (lone surrogates): the page test sends it
        };
        // argv cannot hold a NUL byte (C strings): the CLI gets the rest of the text
        let q = q
            .repeat(case["repeat"].as_u64().unwrap_or(1) as usize)
            .replace('\0', "");
        let name = case["name"].as_str().unwrap();
        let out = glimpse(&[
            os("ask"),
            good.as_os_str(),
            os(&q),
            os("--device"),
            os("cpu"),
            os("--json"),
        ]);
        if case["expect"] == "ok" {
            assert_clean_exit(&out, 0, name);
            let v: Value = serde_json::from_slice(&out.stdout).unwrap();
            assert!(v["answer"].is_string(), "{name}: {v}");
        } else {
            assert_clean_exit(&out, 1, name);
            let err = text(&out.stderr);
            assert!(
                regex(case["error"].as_str().unwrap()).is_match(&err),
                "{name}: {err}"
            );
        }
    }
    // argv that is not UTF-8 (what a shell passes for a Latin-1 byte): clap's usage error
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        let bad = std::ffi::OsStr::from_bytes(b"what \xff color?");
        let out = glimpse(&[os("ask"), good.as_os_str(), bad, os("--device"), os("cpu")]);
        assert_clean_exit(&out, 2, "a question that is not UTF-8");
        assert!(
            text(&out.stderr).contains("invalid UTF-8"),
            "{}",
            text(&out.stderr)
        );
    }
}

#[test]
fn every_bad_model_folder_is_its_documented_error() {
    let c = cases();
    let good = corpus().join(c["good_image"].as_str().unwrap());
    for case in c["models"].as_array().unwrap() {
        let dir = corpus().join(case["dir"].as_str().unwrap());
        // a folder with one .gguf loads as that file
        let model = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|e| e == "gguf"))
            .unwrap_or(dir.clone());
        let out = glimpse(&[
            os("caption"),
            good.as_os_str(),
            os("--model"),
            model.as_os_str(),
            os("--device"),
            os("cpu"),
        ]);
        let name = case["dir"].as_str().unwrap();
        assert_clean_exit(&out, 1, name);
        let err = text(&out.stderr);
        assert!(
            regex(case["error"].as_str().unwrap()).is_match(&err),
            "{name}: {err}"
        );
        println!("{name}: {}", err.trim());
    }
    // and the good folder those were made from captions
    let out = glimpse(&[
        os("caption"),
        good.as_os_str(),
        os("--model"),
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/git")
            .as_os_str(),
        os("--device"),
        os("cpu"),
    ]);
    assert_clean_exit(&out, 0, "the git fixture");
}
