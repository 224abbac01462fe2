//! Conversations and the chat template a model ships: `chat_template.json` (`{"chat_template":
//! "..."}`), `chat_template.jinja`, or `tokenizer_config.json`'s `chat_template`, rendered by
//! minijinja with the settings transformers' Jinja environment uses (`trim_blocks`,
//! `lstrip_blocks`, `raise_exception`), so that the prompt text is the reference's.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// One part of a message: text, or the place of an image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Part {
    Text { text: String },
    Image {},
}

/// A message's content: a plain string (a text part) or a list of parts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<Part>),
}

/// One turn of a conversation, as transformers' `apply_chat_template` takes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: Content,
}

impl Message {
    pub fn text(role: &str, text: &str) -> Message {
        Message {
            role: role.into(),
            content: Content::Parts(vec![Part::Text { text: text.into() }]),
        }
    }

    /// A user turn that shows the image, then asks `text`.
    pub fn user_with_image(text: &str) -> Message {
        Message {
            role: "user".into(),
            content: Content::Parts(vec![Part::Image {}, Part::Text { text: text.into() }]),
        }
    }

    /// The parts (a string content is one text part, as processors' templates expect).
    pub fn parts(&self) -> Vec<Part> {
        match &self.content {
            Content::Text(t) => vec![Part::Text { text: t.clone() }],
            Content::Parts(p) => p.clone(),
        }
    }

    pub fn images(&self) -> usize {
        match &self.content {
            Content::Text(_) => 0,
            Content::Parts(p) => p.iter().filter(|p| matches!(p, Part::Image {})).count(),
        }
    }
}

/// The most bytes a chat template may have (the real ones are a few KB).
const MAX_TEMPLATE: usize = 1 << 20;

#[derive(Debug, Clone)]
pub struct ChatTemplate {
    source: String,
}

impl ChatTemplate {
    pub fn new(source: &str) -> Result<ChatTemplate> {
        if source.len() > MAX_TEMPLATE {
            return Err(Error::Config(format!(
                "the chat template is {} bytes; at most {MAX_TEMPLATE} are read",
                source.len()
            )));
        }
        let t = ChatTemplate {
            source: source.to_string(),
        };
        // a template that does not parse is the model's files' fault: say so at load
        t.env()
            .template_from_str(&t.source)
            .map_err(|e| Error::Config(format!("the chat template does not parse: {e}")))?;
        Ok(t)
    }

    /// The template's text.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The template from a model's small files, in transformers' order of preference; None
    /// when the model has none.
    pub fn from_files(meta: &BTreeMap<String, Vec<u8>>) -> Result<Option<ChatTemplate>> {
        let text = |name: &str| -> Result<Option<String>> {
            meta.get(name)
                .map(|b| {
                    String::from_utf8(b.clone())
                        .map_err(|_| Error::Config(format!("{name} is not UTF-8")))
                })
                .transpose()
        };
        if let Some(j) = text("chat_template.jinja")? {
            return Ok(Some(ChatTemplate::new(&j)?));
        }
        for file in ["chat_template.json", "tokenizer_config.json"] {
            let Some(s) = text(file)? else { continue };
            let v = crate::io::config::value(file, &s)?;
            match v.get("chat_template") {
                Some(serde_json::Value::String(t)) => return Ok(Some(ChatTemplate::new(t)?)),
                // a list of named templates: the "default" one
                Some(serde_json::Value::Array(list)) => {
                    let t = list
                        .iter()
                        .find(|e| e.get("name").and_then(|n| n.as_str()) == Some("default"))
                        .and_then(|e| e.get("template"))
                        .and_then(|t| t.as_str())
                        .ok_or_else(|| {
                            Error::Config(format!("{file}: chat_template has no \"default\" entry"))
                        })?;
                    return Ok(Some(ChatTemplate::new(t)?));
                }
                _ => {}
            }
        }
        Ok(None)
    }

    fn env(&self) -> minijinja::Environment<'static> {
        let mut env = minijinja::Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.add_function(
            "raise_exception",
            |msg: String| -> std::result::Result<String, minijinja::Error> {
                Err(minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    msg,
                ))
            },
        );
        env
    }

    /// The prompt text of `messages`; `add_generation_prompt` ends it where the assistant's
    /// answer begins. `special` holds `bos_token`, `eos_token` and the like.
    pub fn render(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
        special: &BTreeMap<String, String>,
    ) -> Result<String> {
        if messages.is_empty() {
            return Err(Error::Invalid("the conversation has no messages".into()));
        }
        // string contents become one text part, as transformers' processors do
        let messages: Vec<serde_json::Value> = messages
            .iter()
            .map(|m| serde_json::json!({"role": m.role, "content": m.parts()}))
            .collect();
        let env = self.env();
        let tmpl = env
            .template_from_str(&self.source)
            .map_err(|e| Error::Config(format!("the chat template does not parse: {e}")))?;
        let mut ctx: BTreeMap<String, minijinja::Value> = special
            .iter()
            .map(|(k, v)| (k.clone(), minijinja::Value::from(v.clone())))
            .collect();
        ctx.insert(
            "messages".into(),
            minijinja::Value::from_serialize(&messages),
        );
        ctx.insert(
            "add_generation_prompt".into(),
            minijinja::Value::from(add_generation_prompt),
        );
        tmpl.render(ctx)
            .map_err(|e| Error::Invalid(format!("the chat template refused the conversation: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IDEFICS3: &str = "<|im_start|>{% for message in messages %}{{message['role'] | capitalize}}{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}";

    #[test]
    fn renders_a_two_turn_conversation() {
        let t = ChatTemplate::new(IDEFICS3).unwrap();
        let msgs = [
            Message::user_with_image("What is it?"),
            Message::text("assistant", "A cat."),
            Message {
                role: "user".into(),
                content: Content::Text("And its color?".into()),
            },
        ];
        let s = t.render(&msgs, true, &BTreeMap::new()).unwrap();
        assert_eq!(
            s,
            "<|im_start|>User:<image>What is it?<end_of_utterance>\nAssistant: A cat.<end_of_utterance>\nUser: And its color?<end_of_utterance>\nAssistant:"
        );
        assert!(t.render(&[], true, &BTreeMap::new()).is_err());
    }

    #[test]
    fn raise_exception_is_an_error_not_a_panic() {
        let t = ChatTemplate::new("{{ raise_exception('roles must alternate') }}").unwrap();
        let e = t
            .render(&[Message::text("user", "hi")], true, &BTreeMap::new())
            .unwrap_err();
        assert!(e.to_string().contains("roles must alternate"), "{e}");
        assert!(ChatTemplate::new("{% for %}").is_err());
    }
}
