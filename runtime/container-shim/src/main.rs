//! `amphi-shim`: the entrypoint wrapper of every container function instance.
//!
//! The container backend mounts this static binary read-only into the container and runs it (under
//! Docker's init) in front of the image's own command. It
//! - starts the function: a long-running server told its `$PORT` (protocol `http`), or nothing
//!   until a request comes, then the command once per request, CGI over stdio (protocol `cgi`);
//! - serves the gateway over a Unix socket in the instance's run directory, so the container
//!   needs no network at all: `GET /.amphi/events` streams what happens inside (NDJSON: `log`,
//!   `listening`, `end`, `exit` events), any other request is a call, forwarded to the function;
//! - reads the function's stdout and stderr and tags every line with the invocation in flight,
//!   so the log store attributes lines exactly when the instance serves one call at a time.
//!
//! Settings come from the environment the backend sets: `AMPHI_SHIM_SOCKET`,
//! `AMPHI_SHIM_PROTOCOL` (`http` or `cgi`), and `PORT`. The command is the argument list.

mod events;
mod forward;
mod output;

use std::process::ExitCode;
use std::sync::Arc;

use tokio::net::UnixListener;

use crate::events::Events;

/// What the backend asked for.
struct Settings {
    socket: String,
    cgi: bool,
    port: u16,
    command: Vec<String>,
}

impl Settings {
    fn from_env() -> Result<Self, String> {
        let socket = std::env::var("AMPHI_SHIM_SOCKET").unwrap_or_else(|_| "/amphi/run/shim.sock".into());
        let cgi = match std::env::var("AMPHI_SHIM_PROTOCOL").as_deref() {
            Ok("cgi") => true,
            Ok("http") | Err(_) => false,
            Ok(other) => return Err(format!("unknown protocol `{other}` (http or cgi)")),
        };
        let port = match std::env::var("PORT") {
            Ok(text) => text.parse().map_err(|_| format!("PORT `{text}` is not a port number"))?,
            Err(_) => 8080,
        };
        let command: Vec<String> = std::env::args().skip(1).collect();
        if command.is_empty() {
            return Err(
                "no command to run: the image has no entrypoint or command, and none is configured".into()
            );
        }
        Ok(Self { socket, cgi, port, command })
    }
}

fn main() -> ExitCode {
    let settings = match Settings::from_env() {
        Ok(settings) => settings,
        Err(why) => {
            eprintln!("amphi-shim: {why}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("amphi-shim: cannot start: {e}");
            return ExitCode::from(2);
        }
    };
    let code = runtime.block_on(run(settings));
    ExitCode::from(code)
}

async fn run(settings: Settings) -> u8 {
    let _ = std::fs::remove_file(&settings.socket);
    let listener = match UnixListener::bind(&settings.socket) {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("amphi-shim: cannot listen on {}: {e}", settings.socket);
            return 2;
        }
    };
    // The gateway may run as another user than the function's image does.
    use std::os::unix::fs::PermissionsExt as _;
    let _ = std::fs::set_permissions(&settings.socket, std::fs::Permissions::from_mode(0o666));

    let events = Arc::new(Events::default());
    let function = if settings.cgi {
        events.listening(std::time::Duration::ZERO);
        forward::Function::Cgi(Arc::new(forward::CgiProgram::new(settings.command.clone())))
    } else {
        match forward::Server::start(&settings.command, settings.port, events.clone()) {
            Ok(server) => forward::Function::Http(server),
            Err(why) => {
                eprintln!("amphi-shim: {why}");
                return 127;
            }
        }
    };
    let function = Arc::new(function);
    let exited = events.exit_code();
    tokio::select! {
        () = forward::serve(listener, function, events.clone()) => 2,
        code = exited => code,
    }
}
