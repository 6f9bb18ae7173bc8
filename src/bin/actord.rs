//! The `actord` binary: every role (scheduler, nanny, worker, client) in one.

fn main() -> std::process::ExitCode {
    // Everything actord writes (journal, scheduler file, task outputs) is
    // owner-only; the files that matter most also get explicit modes.
    actord::security::perms::owner_only_umask();
    actord::cli::main()
}
