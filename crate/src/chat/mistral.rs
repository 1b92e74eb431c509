//! Mistral V3 instruct format for tekken tokenizers, as mistral-common 1.x renders a chat
//! completion request (InstructRequestNormalizer + InstructTokenizerV3):
//! - all non-empty system messages are joined with "\n\n" into one system prompt;
//! - consecutive messages of the same role are merged, their non-empty contents joined with
//!   "\n\n" (a system message between two user messages keeps them apart);
//! - if the conversation does not start with a user message, an empty one is put first;
//! - `<s>`, then each user turn is `[INST]` + text + `[/INST]` where the LAST user turn's text is
//!   `system_prompt + "\n\n" + content` when there is a system prompt, and each assistant turn is
//!   its content with trailing spaces removed, followed by `</s>`.
//!
//! Texts are encoded with `Tokenizer::encode`, so they never yield control tokens.

use super::Message;
use crate::tokenizer::Tokenizer;
use crate::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    System,
    User,
    Assistant,
}

fn role_of(message: &Message) -> Result<Role> {
    match message.role.as_str() {
        "system" => Ok(Role::System),
        "user" => Ok(Role::User),
        "assistant" => Ok(Role::Assistant),
        other => Err(Error::Template(format!(
            "role {other:?} is not supported by the Mistral V3-Tekken template (system, user, assistant)"
        ))),
    }
}

struct SpecialIds {
    bos: u32,
    eos: u32,
    begin_inst: u32,
    end_inst: u32,
}

fn special_ids(tokenizer: &Tokenizer) -> Result<SpecialIds> {
    let control = |text: &str| {
        tokenizer.control_token(text).ok_or_else(|| {
            Error::Template(format!(
                "the Mistral V3-Tekken template needs the control token {text}, which this vocabulary lacks"
            ))
        })
    };
    Ok(SpecialIds {
        bos: control("<s>")?,
        eos: control("</s>")?,
        begin_inst: control("[INST]")?,
        end_inst: control("[/INST]")?,
    })
}

pub(super) fn check_tokens(tokenizer: &Tokenizer) -> Result<()> {
    special_ids(tokenizer).map(|_| ())
}

pub(super) fn render(tokenizer: &Tokenizer, messages: &[Message]) -> Result<Vec<u32>> {
    let ids = special_ids(tokenizer)?;
    let roles = messages
        .iter()
        .map(role_of)
        .collect::<Result<Vec<Role>>>()?;

    let system_parts: Vec<&str> = messages
        .iter()
        .zip(&roles)
        .filter(|(m, r)| **r == Role::System && !m.content.is_empty())
        .map(|(m, _)| m.content.as_str())
        .collect();
    let system_prompt = (!system_parts.is_empty()).then(|| system_parts.join("\n\n"));

    // Runs of the same role, system runs dropped.
    let mut turns: Vec<(Role, String)> = Vec::new();
    let mut start = 0;
    while start < messages.len() {
        let role = roles[start];
        let mut end = start;
        while end < messages.len() && roles[end] == role {
            end += 1;
        }
        if role != Role::System {
            let parts: Vec<&str> = messages[start..end]
                .iter()
                .map(|m| m.content.as_str())
                .filter(|c| !c.is_empty())
                .collect();
            turns.push((role, parts.join("\n\n")));
        }
        start = end;
    }
    if turns.first().map(|(r, _)| *r) != Some(Role::User) {
        turns.insert(0, (Role::User, String::new()));
    }
    let last_user = turns
        .iter()
        .rposition(|(r, _)| *r == Role::User)
        .unwrap_or(0);

    let mut out = vec![ids.bos];
    for (i, (role, content)) in turns.iter().enumerate() {
        match role {
            Role::User => {
                out.push(ids.begin_inst);
                match (&system_prompt, i == last_user) {
                    (Some(system), true) => {
                        out.extend(tokenizer.encode(&format!("{system}\n\n{content}"))?)
                    }
                    _ => out.extend(tokenizer.encode(content)?),
                }
                out.push(ids.end_inst);
            }
            Role::Assistant => {
                out.extend(tokenizer.encode(content.trim_end_matches(' '))?);
                out.push(ids.eos);
            }
            Role::System => {}
        }
    }
    Ok(out)
}
