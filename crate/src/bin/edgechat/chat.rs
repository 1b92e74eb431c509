//! `edgechat chat`: an interactive conversation in the terminal.
//!
//! The whole history is sent on every turn; the engine finds the part its KV cache already holds
//! and only computes the new turn. Ctrl-C while an answer is streaming stops that answer (what was
//! shown stays in the history); Ctrl-C or Ctrl-D at the prompt leaves. `/reset` starts over,
//! `/exit` leaves.

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use edgechat::chat::Message;
use edgechat::session::{CancelToken, FinishReason};

use crate::common::{load_engine, stats_line, BackendArg, CliError, CliResult, SamplingArgs};

#[derive(clap::Args)]
pub struct Args {
    /// GGUF model file
    #[arg(long, short)]
    model: PathBuf,
    #[command(flatten)]
    backend: BackendArg,
    /// System message at the start of the conversation
    #[arg(long)]
    system: Option<String>,
    /// Do not print figures after each answer
    #[arg(long)]
    quiet: bool,
    #[command(flatten)]
    sampling: SamplingArgs,
}

pub fn main(args: Args) -> CliResult {
    let params = args.sampling.params()?;
    let mut engine = load_engine(&args.model, args.backend.backend)?;

    // The answer being generated, if any: Ctrl-C cancels it, or leaves when there is none.
    let answering: Arc<Mutex<Option<CancelToken>>> = Arc::new(Mutex::new(None));
    let handler_state = Arc::clone(&answering);
    ctrlc::set_handler(move || {
        let current = handler_state
            .lock()
            .map(|guard| guard.clone())
            .unwrap_or(None);
        match current {
            Some(token) => token.cancel(),
            None => {
                println!();
                std::process::exit(0);
            }
        }
    })
    .map_err(|e| CliError::Usage(format!("cannot install the Ctrl-C handler: {e}")))?;

    let new_history = || -> Vec<Message> {
        args.system
            .iter()
            .map(|s| Message::system(s.clone()))
            .collect()
    };
    let mut history = new_history();
    eprintln!(
        "chatting with {} — /reset starts over, /exit or Ctrl-D leaves, Ctrl-C stops an answer",
        args.model.display()
    );

    let stdin = std::io::stdin();
    let mut line = String::new();
    loop {
        print!("> ");
        std::io::stdout().flush()?;
        line.clear();
        if stdin.lock().read_line(&mut line)? == 0 {
            println!();
            return Ok(());
        }
        let input = line.trim();
        match input {
            "" => continue,
            "/exit" | "/quit" => return Ok(()),
            "/reset" => {
                history = new_history();
                engine.reset();
                eprintln!("(conversation cleared)");
                continue;
            }
            _ => {}
        }
        history.push(Message::user(input));

        let cancel = CancelToken::new();
        set_answering(&answering, Some(cancel.clone()));
        let mut stdout = std::io::stdout().lock();
        let result = engine.chat(&history, &params, &cancel, &mut |text| {
            let _ = stdout.write_all(text.as_bytes());
            let _ = stdout.flush();
        });
        drop(stdout);
        set_answering(&answering, None);
        println!();

        match result {
            Ok(completion) => {
                if completion.finish_reason == FinishReason::Cancelled {
                    eprintln!("(stopped)");
                }
                if !args.quiet {
                    eprintln!("[{}]", stats_line(&completion.stats));
                }
                history.push(Message::assistant(completion.text));
            }
            Err(edgechat::Error::ContextLength { needed, limit }) => {
                history.pop();
                eprintln!("the conversation needs {needed} tokens but the context holds {limit}: /reset to start over");
            }
            Err(e) => return Err(e.into()),
        }
    }
}

fn set_answering(state: &Mutex<Option<CancelToken>>, token: Option<CancelToken>) {
    if let Ok(mut guard) = state.lock() {
        *guard = token;
    }
}
