//! `edgechat run`: complete one prompt, streaming only the completion to stdout.

use std::io::Write;
use std::path::PathBuf;

use edgechat::chat::Message;
use edgechat::session::CancelToken;

use crate::common::{load_engine, stats_line, BackendArg, CliError, CliResult, SamplingArgs};

#[derive(clap::Args)]
pub struct Args {
    /// GGUF model file
    #[arg(long, short)]
    model: PathBuf,
    #[command(flatten)]
    backend: BackendArg,
    /// The prompt: raw text (BOS first when the tokenizer adds one), or with --chat one user message
    #[arg(long, short)]
    prompt: String,
    /// Render the prompt with the model's chat template as a single user message
    #[arg(long)]
    chat: bool,
    /// With --chat: a system message before the user message
    #[arg(long, requires = "chat")]
    system: Option<String>,
    #[command(flatten)]
    sampling: SamplingArgs,
}

pub fn main(args: Args) -> CliResult {
    let params = args.sampling.params()?;
    let mut engine = load_engine(&args.model, args.backend.backend)?;
    let prompt = if args.chat {
        let mut messages = Vec::new();
        if let Some(system) = &args.system {
            messages.push(Message::system(system.clone()));
        }
        messages.push(Message::user(args.prompt.clone()));
        engine
            .template()
            .render(engine.tokenizer(), &messages, true)?
    } else {
        engine.encode_prompt(&args.prompt)?
    };
    if prompt.is_empty() {
        return Err(CliError::Usage(
            "the prompt is empty (and the model adds no BOS)".into(),
        ));
    }

    let cancel = CancelToken::new();
    let mut stdout = std::io::stdout().lock();
    let mut write_error = None;
    let completion = engine.generate(&prompt, &params, &cancel, &mut |text| {
        // A closed stdout (`| head`) ends the generation; the error is reported after.
        if let Err(e) = stdout
            .write_all(text.as_bytes())
            .and_then(|_| stdout.flush())
        {
            write_error.get_or_insert(e);
            cancel.cancel();
        }
    })?;
    if let Some(e) = write_error {
        return Err(e.into());
    }
    writeln!(stdout)?;
    eprintln!(
        "[{}; finish: {}]",
        stats_line(&completion.stats),
        completion.finish_reason.as_str()
    );
    Ok(())
}
