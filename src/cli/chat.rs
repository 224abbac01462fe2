//! `glimpse chat IMAGE`: a conversation with an instruction model from the terminal or a pipe.

use anyhow::Context;

use crate::{load_pipeline, read_image, GenArgs, ModelArgs};

/// `glimpse chat`: reads user turns from stdin until an empty line or its end; streams each
/// answer (or, with --json, prints the whole conversation at the end).
pub(crate) fn chat(
    image: &std::path::Path,
    say: Option<String>,
    model: &ModelArgs,
    gen: &GenArgs,
) -> anyhow::Result<()> {
    use glimpse::io::chat::Message;
    use std::io::{BufRead, IsTerminal, Write};
    let p = load_pipeline(model)?;
    let opts = gen.apply(p.default_options());
    let prepared = p
        .prepare_image(&read_image(image)?)
        .with_context(|| format!("{}", image.display()))?;
    let mut session = glimpse::pipeline::ChatSession::new();
    let mut messages: Vec<Message> = Vec::new();
    let stdin = std::io::stdin();
    let interactive = stdin.is_terminal() && !model.json;
    let mut lines = stdin.lock().lines();
    let mut next = say;
    loop {
        let text = match next.take() {
            Some(t) => t,
            None => {
                if interactive {
                    print!("> ");
                    std::io::stdout().flush()?;
                }
                match lines.next() {
                    Some(line) => line?,
                    None => break,
                }
            }
        };
        let text = text.trim().to_string();
        if text.is_empty() {
            break;
        }
        messages.push(if messages.is_empty() {
            Message::user_with_image(&text)
        } else {
            Message::text("user", &text)
        });
        let mut shown = 0usize;
        let mut on_text = |t: &str| {
            if !model.json && t.len() > shown && t.is_char_boundary(shown) {
                print!("{}", &t[shown..]);
                let _ = std::io::stdout().flush();
                shown = t.len();
            }
            true
        };
        let out =
            pollster::block_on(p.chat(&prepared, &messages, &mut session, &opts, &mut on_text))?;
        if !model.json {
            println!();
        }
        messages.push(Message::text("assistant", &out.text));
    }
    if model.json {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({"image": image, "messages": messages})
            )?
        );
    }
    Ok(())
}
