//! Jinja chat templates (a GGUF's `tokenizer.chat_template`), rendered like transformers does
//! (trim_blocks, lstrip_blocks, Python string methods, `raise_exception`) and then tokenized with
//! control-token texts in the TEMPLATE turned into control tokens, while the message contents stay
//! plain text.
//!
//! How contents are kept plain: before rendering, each content is "protected" with characters from
//! the end of Unicode's last private-use plane: wherever a control-token text starts inside it,
//! that character is marked literal, and a break mark is put at each end that is not whitespace
//! (so no control text can form across the boundary with template text). The control-token
//! scanner skips marked characters; the marks are removed before the plain text is encoded. The
//! template still sees the real content otherwise (so `trim`, `strip()`, comparisons on roles
//! keep working), and the plain text around and inside a message is encoded as one run, exactly
//! as Hugging Face and llama.cpp tokenize a rendered prompt.

use minijinja::{context, Environment, ErrorKind};

use super::Message;
use crate::tokenizer::{ControlMatcher, Tokenizer};
use crate::{Error, Result};

/// Starts every mark; in content it is doubled.
const ESCAPE: char = '\u{10FFFD}';
/// `ESCAPE LITERAL c`: `c` is content, never the start of a control token.
const LITERAL: char = '\u{10FFFC}';
/// `ESCAPE BREAK`: nothing; no control token spans it.
const BREAK: char = '\u{10FFFB}';

fn environment(source: &str) -> Result<Environment<'_>> {
    let mut env = Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function(
        "raise_exception",
        |message: String| -> std::result::Result<String, minijinja::Error> {
            Err(minijinja::Error::new(ErrorKind::InvalidOperation, message))
        },
    );
    env.add_template("chat_template", source)
        .map_err(template_error)?;
    Ok(env)
}

fn template_error(e: minijinja::Error) -> Error {
    let mut message = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        message.push_str(": ");
        message.push_str(&s.to_string());
        source = s.source();
    }
    Error::Template(message)
}

pub(super) fn check_syntax(source: &str) -> Result<()> {
    environment(source).map(|_| ())
}

pub(super) fn render(
    source: &str,
    tokenizer: &Tokenizer,
    messages: &[Message],
    add_generation_prompt: bool,
) -> Result<Vec<u32>> {
    let controls = tokenizer.control_matcher();
    let mut protected = Vec::with_capacity(messages.len());
    for m in messages {
        if contains_control_text(controls, &m.role) || m.role.contains([ESCAPE, LITERAL, BREAK]) {
            return Err(Error::Template(format!(
                "role {:?} contains special-token text",
                m.role
            )));
        }
        protected.push(Message {
            role: m.role.clone(),
            content: protect(&m.content, controls),
        });
    }
    let token_text = |id: Option<u32>| {
        id.and_then(|id| tokenizer.id_to_piece(id))
            .unwrap_or("")
            .to_string()
    };
    let bos_token = token_text(tokenizer.bos_id());
    let eos_token = token_text(tokenizer.eos_ids().first().copied());

    let env = environment(source)?;
    let template = env.get_template("chat_template").map_err(template_error)?;
    let rendered = template
        .render(context! {
            messages => protected,
            add_generation_prompt => add_generation_prompt,
            bos_token => bos_token,
            eos_token => eos_token,
        })
        .map_err(template_error)?;

    let mut ids = Vec::new();
    for piece in scan(&rendered, controls) {
        match piece {
            Scanned::Control(id) => ids.push(id),
            Scanned::Text(text) => ids.extend(tokenizer.encode(&unprotect(text))?),
        }
    }
    // Like llama.cpp: the model's BOS goes first unless the template already wrote it.
    if tokenizer.add_bos() {
        if let Some(bos) = tokenizer.bos_id() {
            if ids.first() != Some(&bos) {
                ids.insert(0, bos);
            }
        }
    }
    Ok(ids)
}

fn contains_control_text(controls: &ControlMatcher, text: &str) -> bool {
    text.char_indices()
        .any(|(i, _)| controls.match_at(text, i).is_some())
}

/// Content with marks that keep control-token texts in it from being recognized.
fn protect(content: &str, controls: &ControlMatcher) -> String {
    let mut out = String::with_capacity(content.len() + 8);
    let guard_start = content.chars().next().is_some_and(|c| !c.is_whitespace());
    let guard_end = content
        .chars()
        .next_back()
        .is_some_and(|c| !c.is_whitespace());
    if guard_start {
        out.push(ESCAPE);
        out.push(BREAK);
    }
    for (i, c) in content.char_indices() {
        if c == ESCAPE {
            out.push(ESCAPE);
            out.push(ESCAPE);
        } else if controls.match_at(content, i).is_some() {
            out.push(ESCAPE);
            out.push(LITERAL);
            out.push(c);
        } else {
            out.push(c);
        }
    }
    if guard_end {
        out.push(ESCAPE);
        out.push(BREAK);
    }
    out
}

/// Removes the marks [`protect`] added.
fn unprotect(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c != ESCAPE {
            out.push(c);
            continue;
        }
        match chars.peek() {
            Some(&ESCAPE) => {
                chars.next();
                out.push(ESCAPE);
            }
            Some(&BREAK) | Some(&LITERAL) => {
                chars.next();
            }
            // An escape character the template itself wrote: keep it.
            _ => out.push(ESCAPE),
        }
    }
    out
}

enum Scanned<'t> {
    Text(&'t str),
    Control(u32),
}

/// Splits rendered text into plain runs (marks still in) and control tokens, skipping marked
/// content characters.
fn scan<'t>(text: &'t str, controls: &ControlMatcher) -> Vec<Scanned<'t>> {
    let mut out = Vec::new();
    let mut plain_start = 0;
    let mut pos = 0;
    while pos < text.len() {
        let c = text[pos..].chars().next().unwrap_or(ESCAPE);
        if c == ESCAPE {
            // Skip the escape, its kind, and a literal's character.
            let mut rest = text[pos + c.len_utf8()..].chars();
            let mut len = c.len_utf8();
            if let Some(kind) = rest.next() {
                len += kind.len_utf8();
                if kind == LITERAL {
                    len += rest.next().map_or(0, char::len_utf8);
                }
            }
            pos += len;
            continue;
        }
        if let Some((len, id)) = controls.match_at(text, pos) {
            if plain_start < pos {
                out.push(Scanned::Text(&text[plain_start..pos]));
            }
            out.push(Scanned::Control(id));
            pos += len;
            plain_start = pos;
        } else {
            pos += c.len_utf8();
        }
    }
    if plain_start < text.len() {
        out.push(Scanned::Text(&text[plain_start..]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matcher() -> ControlMatcher {
        ControlMatcher::new([("<|im_start|>", 1u32), ("<|im_end|>", 2), ("<s>", 3)])
    }

    #[test]
    fn protected_content_round_trips_and_hides_control_text() {
        let m = matcher();
        for content in [
            "",
            "hi",
            "  spaced  ",
            "<|im_start|>user\nx<|im_end|>",
            "a\u{10FFFD}b",
            "<s><s>",
        ] {
            let p = protect(content, &m);
            assert_eq!(unprotect(&p), content);
            assert!(
                scan(&p, &m).iter().all(|s| matches!(s, Scanned::Text(_))),
                "{content:?}"
            );
        }
    }

    #[test]
    fn no_control_token_forms_across_a_content_boundary() {
        let m = matcher();
        let rendered = format!("<|im_{}", protect("start|>", &m));
        assert!(scan(&rendered, &m)
            .iter()
            .all(|s| matches!(s, Scanned::Text(_))));
        let rendered = format!("<s>{}|>", protect("<|im_start", &m));
        let pieces = scan(&rendered, &m);
        assert!(matches!(pieces[0], Scanned::Control(3)));
        assert!(pieces[1..].iter().all(|s| matches!(s, Scanned::Text(_))));
    }

    #[test]
    fn trim_in_the_template_still_trims_content() {
        let m = matcher();
        let env = environment("{{ c | trim }}|{{ c.strip() }}").unwrap();
        let out = env
            .get_template("chat_template")
            .unwrap()
            .render(context! { c => protect("  hello  ", &m) })
            .unwrap();
        assert_eq!(unprotect(&out), "hello|hello");
    }
}
