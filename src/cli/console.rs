//! `actord console`: the admin commands of `actord ctl` over one connection,
//! with history, tab completion (commands, job and worker ids) and
//! reconnection when the scheduler restarts.

use super::ctl::run_ctl;
use super::{CliError, CtlCommand};
use crate::client::Client;
use clap::{CommandFactory, Parser};
use rustyline::completion::{Completer, Pair};
use rustyline::error::ReadlineError;
use rustyline::history::DefaultHistory;
use rustyline::{Context, Editor, Helper, Highlighter, Hinter, Validator};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

/// One console line: a `ctl` command without `actord ctl` in front.
#[derive(Parser, Debug)]
#[command(no_binary_name = true, name = "actord console", disable_version_flag = true)]
struct Line {
    /// Print JSON instead of a table or a sentence.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: CtlCommand,
}

/// The first words the console knows: every ctl command, and its own.
fn words() -> Vec<String> {
    let mut words: Vec<String> =
        Line::command().get_subcommands().map(|c| c.get_name().to_string()).collect();
    words.extend(["quit", "exit"].map(String::from));
    words
}

/// What `help` prints: the console's commands, one line each.
fn console_help() -> String {
    let mut text = String::from("Commands (`help COMMAND` or `COMMAND --help` for its options):\n");
    for c in Line::command().get_subcommands() {
        let about = c.get_about().map(|a| a.to_string()).unwrap_or_default();
        let first = about.split(". ").next().unwrap_or_default().trim_end_matches('.');
        text.push_str(&format!("  {:<15} {first}\n", c.get_name()));
    }
    text.push_str("  help            This list\n");
    text.push_str("  quit, exit      Leave the console (or Ctrl-D)\n");
    text.push_str("Every command takes --json.");
    text
}

/// Completes the first word from the commands, later words from the job and
/// worker ids the scheduler knows.
#[derive(Helper, Highlighter, Hinter, Validator)]
struct Complete {
    ids: Arc<Mutex<Vec<String>>>,
}

impl Completer for Complete {
    type Candidate = Pair;

    fn complete(&self, line: &str, pos: usize, _: &Context<'_>) -> rustyline::Result<(usize, Vec<Pair>)> {
        let start = line[..pos].rfind(' ').map_or(0, |i| i + 1);
        let word = &line[start..pos];
        let pool: Vec<String> =
            if start == 0 { words() } else { self.ids.lock().map(|ids| ids.clone()).unwrap_or_default() };
        let found = pool
            .into_iter()
            .filter(|c| c.starts_with(word))
            .map(|c| Pair { display: c.clone(), replacement: c })
            .collect();
        Ok((start, found))
    }
}

fn history_path() -> Option<std::path::PathBuf> {
    let base = std::env::var("XDG_STATE_HOME")
        .ok()
        .filter(|v| !v.is_empty())
        .map(std::path::PathBuf::from)
        .or_else(|| {
        std::env::var("HOME").ok().map(|h| std::path::PathBuf::from(h).join(".local/state"))
    })?;
    Some(base.join("actord/console_history"))
}

async fn refresh(client: &mut Client, ids: &Arc<Mutex<Vec<String>>>) {
    let mut all = Vec::new();
    if let Ok(jobs) = client.jobs().await {
        all.extend(jobs.iter().map(|j| j.id.to_string()));
    }
    if let Ok(workers) = client.workers().await {
        all.extend(workers.iter().map(|w| w.id.to_string()));
    }
    if let Ok(mut g) = ids.lock() {
        *g = all;
    }
}

pub async fn run(mut client: Client) -> Result<ExitCode, CliError> {
    let ids = Arc::new(Mutex::new(Vec::new()));
    let mut editor: Editor<Complete, DefaultHistory> =
        Editor::new().map_err(|e| CliError::Failed(format!("cannot start the console: {e}")))?;
    editor.set_helper(Some(Complete { ids: ids.clone() }));
    let history = history_path();
    if let Some(h) = &history {
        let _ = editor.load_history(h);
    }
    eprintln!(
        "connected to {} (epoch {}); `help` lists the commands, `quit` leaves",
        client.file.address, client.file.epoch
    );
    refresh(&mut client, &ids).await;
    loop {
        let line = tokio::task::block_in_place(|| editor.readline("actord> "));
        let line = match line {
            Ok(l) => l,
            Err(ReadlineError::Interrupted) => continue,
            Err(ReadlineError::Eof) => break,
            Err(e) => return Err(CliError::Failed(format!("console input: {e}"))),
        };
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let _ = editor.add_history_entry(line);
        match line {
            "quit" | "exit" => break,
            "help" => {
                outln!("{}", console_help());
                continue;
            }
            _ => {}
        }
        let mut words: Vec<&str> = line.split_whitespace().collect();
        if words.len() == 2 && words[0] == "help" {
            // `help tasks`: that command's own help, as `tasks --help`.
            words = vec![words[1], "--help"];
        }
        let (command, json) = match Line::try_parse_from(words) {
            Ok(l) => (l.command, l.json),
            Err(e) => {
                // clap's own message: the unknown word and what it may have meant.
                let _ = e.print();
                continue;
            }
        };
        let mut result = run_ctl(&mut client, command.clone(), json).await;
        if matches!(&result, Err(CliError::Failed(m)) if m.starts_with("scheduler connection")) {
            eprintln!("lost the scheduler; reconnecting…");
            match client.reconnect().await {
                Ok(()) => {
                    eprintln!("reconnected to {} (epoch {})", client.file.address, client.file.epoch);
                    result = run_ctl(&mut client, command, json).await;
                }
                Err(e) => eprintln!("error: {e}"),
            }
        }
        if let Err(e) = result {
            eprintln!("error: {e}");
        }
        refresh(&mut client, &ids).await;
    }
    if let Some(h) = &history {
        if let Some(dir) = h.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let _ = editor.save_history(h);
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    #[test]
    fn help_lists_the_consoles_own_commands() {
        let help = super::console_help();
        for cmd in ["status", "tasks", "retry", "log-level", "quit"] {
            assert!(help.lines().any(|l| l.trim_start().starts_with(cmd)), "{cmd}: {help}");
        }
        assert!(!help.contains("Usage: actord console"), "{help}");
    }
}
