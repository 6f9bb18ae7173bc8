//! The `actord` binary: every role (scheduler, nanny, worker, client) in one.

fn main() -> std::process::ExitCode {
    actord::cli::main()
}
