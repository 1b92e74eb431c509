//! `edgechat`: run, chat with, inspect, benchmark and serve llama-architecture GGUF models.

mod bench;
mod chat;
mod common;
mod generate;
mod inspect;
mod logits;
mod perplexity;
mod run;
mod server;
mod tokenize;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "edgechat",
    version,
    about = "LLM inference for llama-architecture GGUF models"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show a GGUF file's metadata, tensors and model configuration
    Inspect(inspect::Args),
    /// Print the token ids of a text or a chat conversation as a JSON array
    Tokenize(tokenize::Args),
    /// Complete one prompt, streaming the completion to stdout
    Run(run::Args),
    /// Interactive chat in the terminal
    Chat(chat::Args),
    /// Print the most likely next tokens after a prompt, with their logits, as JSON
    Logits(logits::Args),
    /// Perplexity of a text file, computed like llama.cpp's llama-perplexity
    Perplexity(perplexity::Args),
    /// Measure prefill and decode speed
    Bench(bench::Args),
    /// Write a random-weight Mistral-shaped GGUF model (for tests and benchmarks)
    Generate(generate::Args),
    /// OpenAI-compatible HTTP server (/v1/chat/completions, /v1/models, /health)
    Serve(server::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Inspect(args) => inspect::main(args),
        Command::Tokenize(args) => tokenize::main(args),
        Command::Run(args) => run::main(args),
        Command::Chat(args) => chat::main(args),
        Command::Logits(args) => logits::main(args),
        Command::Perplexity(args) => perplexity::main(args),
        Command::Bench(args) => bench::main(args),
        Command::Generate(args) => generate::main(args),
        Command::Serve(args) => server::main(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // `edgechat inspect ... | head` closed the pipe: not an error.
        Err(common::CliError::Io(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => {
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
