//! SHELL: slbd's control socket, a root-only Unix socket (mode 0600 in a 0700 directory)
//! answering `proto` requests, one thread per client, at most `CAP_LOCAL` at once (the
//! common bounded accept loop, `slb_common::serve`).
//! Side effects: creates the socket file (and its directory), removes it on shutdown; threads.

use std::io::{BufReader, Write};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use slb_common::envelope::{self, EnvelopeError, Line};

use super::proto::{self, Command, Reply};

/// An idle client does not hold its thread (and its place under the cap) for ever.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// What answers the requests; the daemon implements it over the running data plane.
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, cmd: &Command) -> Result<Reply, String>;
}

#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    #[error("another slbd is already listening on {0}")]
    InUse(PathBuf),
    #[error("cannot create the control socket {path}")]
    Create {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The listening socket; removes its file when dropped.
pub struct ControlSocket {
    path: PathBuf,
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Binds `path` and serves it on a background thread.
pub fn start(path: &Path, handler: Arc<dyn Handler>) -> Result<ControlSocket, CtlError> {
    let create = |source| CtlError::Create {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        if !dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(create)?;
        }
    }
    if path.exists() {
        // A live socket means another slbd; a dead one is left over from a crash.
        if UnixStream::connect(path).is_ok() {
            return Err(CtlError::InUse(path.to_path_buf()));
        }
        std::fs::remove_file(path).map_err(create)?;
    }
    let listener = UnixListener::bind(path).map_err(create)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(create)?;
    let policy = slb_common::serve::Policy::new("control", slb_common::serve::CAP_LOCAL)
        .read_timeout(IDLE_TIMEOUT);
    slb_common::serve::start(listener, policy, move |conn, _| serve(conn, &*handler))
        .map_err(create)?;
    Ok(ControlSocket {
        path: path.to_path_buf(),
    })
}

fn serve(conn: UnixStream, handler: &dyn Handler) {
    let Ok(mut out) = conn.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(conn);
    loop {
        let line = match envelope::read_line(&mut reader) {
            // A last request without its newline is answered too.
            Ok(Line::Whole(line) | Line::Cut(line)) => line,
            Ok(Line::TooLong) => {
                // Answer once and hang up rather than read the rest.
                let _ = out.write_all(proto::error(&EnvelopeError::TooLong.to_string()).as_bytes());
                tracing::warn!(
                    bytes = envelope::MAX_LINE,
                    "control request too long; connection closed"
                );
                return;
            }
            Ok(Line::Closed) | Err(_) => return,
        };
        let reply = match proto::parse_request(line.trim_ascii_end()) {
            Ok(cmd) => match handler.handle(&cmd) {
                Ok(reply) => match serde_json::to_value(&reply) {
                    Ok(v) => proto::ok(v),
                    Err(e) => proto::error(&format!("cannot encode the reply: {e}")),
                },
                Err(e) => proto::error(&e),
            },
            Err(e) => {
                // Edits can carry passwords, and a parse error may quote the input: the log
                // gets only the kind of problem, the (root-only) client the full reason.
                match &e {
                    proto::ProtoError::BadEdits(_) => {
                        tracing::warn!("control request refused: bad edits")
                    }
                    other => tracing::warn!(error = %other, "control request refused"),
                }
                proto::error(&e.to_string())
            }
        };
        if out.write_all(reply.as_bytes()).is_err() {
            return;
        }
    }
}
