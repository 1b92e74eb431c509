//! `edgechat tokenize`: token ids of a text, or of a conversation rendered with the chat template.

use std::path::PathBuf;

use edgechat::chat::{ChatTemplate, Message};
use edgechat::tokenizer::Tokenizer;

use crate::common::{open_model, read_text_file, CliError, CliResult};

#[derive(clap::Args)]
#[command(group = clap::ArgGroup::new("input").required(true).args(["text", "chat_json"]))]
pub struct Args {
    /// GGUF model file (its vocabulary and chat template are used)
    #[arg(long, short)]
    model: PathBuf,
    /// Plain text to tokenize (BOS first when the tokenizer adds one; control-token texts stay text)
    #[arg(long)]
    text: Option<String>,
    /// A JSON file holding an array of {"role", "content"} messages, rendered with the model's
    /// chat template and the generation prompt
    #[arg(long)]
    chat_json: Option<PathBuf>,
    /// Do not add BOS to --text even when the tokenizer wants one
    #[arg(long)]
    no_bos: bool,
}

pub fn main(args: Args) -> CliResult {
    let opened = open_model(&args.model)?;
    let tokenizer = Tokenizer::from_gguf(&opened.file)?;
    let ids = match (&args.text, &args.chat_json) {
        (Some(text), _) if args.no_bos => tokenizer.encode(text)?,
        (Some(text), _) => tokenizer.encode_prompt(text)?,
        (None, Some(path)) => {
            let json = read_text_file(path)?;
            let messages: Vec<Message> = serde_json::from_str(&json).map_err(|e| {
                CliError::Usage(format!(
                    "{}: expected a JSON array of {{\"role\", \"content\"}} messages: {e}",
                    path.display()
                ))
            })?;
            let template = ChatTemplate::from_gguf(&opened.file, &tokenizer)?;
            template.render(&tokenizer, &messages, true)?
        }
        (None, None) => return Err(CliError::Usage("give --text or --chat-json".into())),
    };
    println!("{}", serde_json::to_string(&ids)?);
    Ok(())
}
