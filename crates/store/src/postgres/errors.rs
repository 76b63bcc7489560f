//! Failure classification: what went wrong with an attempt at a batch (or a
//! read), in the terms the retry needs: transient (retry), commit unknown
//! (find out first) or permanent (answer `Storage`).

use deadpool_postgres::PoolError;
use tokio_postgres::error::SqlState;
use voucherd_core::error::Error;

/// Why an attempt at a batch (or a read) failed, in the terms the retry needs.
#[derive(Debug)]
pub(super) enum Failure {
    /// Nothing was committed (unless `retry` is [`Retry::Lost`] during COMMIT)
    /// and another attempt may succeed.
    Transient { cause: String, retry: Retry },
    /// Nothing was committed and another attempt would fail the same way.
    Permanent { cause: String },
    /// The connection broke during COMMIT and whether it committed could not be
    /// found out.
    Unresolved { cause: String },
}

/// What a transient failure needs before the next attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Retry {
    /// The transaction lost against another writer (a serialization failure,
    /// a deadlock): the connection is fine and the retry reads the winner's rows.
    Conflict,
    /// The connection broke, timed out or was shut down by the server: a new
    /// one is needed, and a COMMIT in flight may or may not have landed.
    Lost,
    /// The server refused to write (SQLSTATE 25006 `read_only_sql_transaction`):
    /// it is a standby, or a primary being demoted. The server answered, so
    /// nothing was written; the connection is dropped so that the next one,
    /// opened with `target_session_attrs=read-write`, finds the primary.
    ReadOnly,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Transient { cause, .. }
            | Failure::Permanent { cause }
            | Failure::Unresolved { cause } => f.write_str(cause),
        }
    }
}

impl Failure {
    pub(super) fn connection(cause: impl Into<String>) -> Self {
        Failure::Transient {
            cause: cause.into(),
            retry: Retry::Lost,
        }
    }

    pub(super) fn conflict(cause: impl Into<String>) -> Self {
        Failure::Transient {
            cause: cause.into(),
            retry: Retry::Conflict,
        }
    }

    pub(super) fn read_only(cause: impl Into<String>) -> Self {
        Failure::Transient {
            cause: cause.into(),
            retry: Retry::ReadOnly,
        }
    }

    pub(super) fn permanent(cause: impl Into<String>) -> Self {
        Failure::Permanent {
            cause: cause.into(),
        }
    }

    pub(super) fn is_transient(&self) -> bool {
        matches!(self, Failure::Transient { .. })
    }

    /// True when a failure during COMMIT leaves the outcome unknown: the reply
    /// to COMMIT was lost, not a refusal of it.
    pub(super) fn leaves_commit_unknown(&self) -> bool {
        matches!(
            self,
            Failure::Transient {
                retry: Retry::Lost,
                ..
            }
        )
    }

    /// True when the connection that met the failure must not serve again:
    /// it is broken, or it is attached to a server that does not write (a pool
    /// recycling it would hand every retry the same standby).
    pub(super) fn discards_connection(&self) -> bool {
        matches!(
            self,
            Failure::Transient {
                retry: Retry::Lost | Retry::ReadOnly,
                ..
            }
        )
    }

    /// The domain error callers see once no attempt is left.
    pub(super) fn into_error(self) -> Error {
        match self {
            // Nothing was written: the caller may try again later.
            Failure::Transient { cause, .. } => Error::unavailable(cause),
            // Whether it was written is unknown, but every write of the ledger is
            // safe to repeat: a redemption has a stable id and key (a retry is
            // answered `AlreadyRedeemed` if it did commit), and so does a
            // transaction sent with an Idempotency-Key. So: retry later (503).
            Failure::Unresolved { cause } => Error::unavailable(cause),
            Failure::Permanent { cause } => Error::storage(cause),
        }
    }
}

impl From<tokio_postgres::Error> for Failure {
    fn from(error: tokio_postgres::Error) -> Self {
        Failure::from(&error)
    }
}

/// The error and its causes on one line: the driver's own message is only its
/// kind ("db error"), the server's message is in the source.
pub(super) fn describe(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

impl From<&tokio_postgres::Error> for Failure {
    fn from(error: &tokio_postgres::Error) -> Self {
        let cause = describe(error);
        match error.code() {
            Some(state) => classify(state, cause),
            // Without a SQLSTATE the driver reports a closed or broken
            // connection, a timeout, a server that refused a read-write session
            // (`target_session_attrs=read-write` against a standby), or a
            // protocol error, which a new connection may cure; the remaining
            // kinds (a column type mismatch) fail again, and the retry is bounded.
            None => Failure::connection(cause),
        }
    }
}

/// The failure a server's SQLSTATE stands for.
fn classify(state: &SqlState, cause: String) -> Failure {
    let connection_lost = state.code().starts_with("08")
        || *state == SqlState::ADMIN_SHUTDOWN
        || *state == SqlState::CRASH_SHUTDOWN
        || *state == SqlState::CANNOT_CONNECT_NOW
        || *state == SqlState::TOO_MANY_CONNECTIONS
        // CockroachDB: "result is ambiguous", the commit may have happened.
        || *state == SqlState::T_R_STATEMENT_COMPLETION_UNKNOWN;
    // Conflicts with a concurrent writer: a retry reads the winner's rows
    // and turns the clash into the right business answer (a unique
    // violation here means another instance inserted the same key first;
    // the set-based statements never raise one on their own).
    let conflict = *state == SqlState::T_R_SERIALIZATION_FAILURE
        || *state == SqlState::T_R_DEADLOCK_DETECTED
        || *state == SqlState::LOCK_NOT_AVAILABLE
        || *state == SqlState::UNIQUE_VIOLATION
        || *state == SqlState::CHECK_VIOLATION;
    if connection_lost {
        Failure::connection(cause)
    } else if conflict {
        Failure::conflict(cause)
    } else if *state == SqlState::READ_ONLY_SQL_TRANSACTION {
        // After a failover: the connection reached a standby (a URL without
        // target_session_attrs=read-write) or a server turned read-only.
        Failure::read_only(cause)
    } else {
        Failure::permanent(cause)
    }
}

impl From<PoolError> for Failure {
    fn from(error: PoolError) -> Self {
        match error {
            PoolError::Backend(error) => Failure::from(error),
            PoolError::Timeout(_) => Failure::connection(format!("database connection: {error}")),
            other => Failure::permanent(format!("database connection pool: {other}")),
        }
    }
}

pub(super) fn storage_failure(error: Error) -> Failure {
    Failure::permanent(error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use voucherd_core::error::ErrorCode;

    fn failure(code: &str) -> Failure {
        classify(&SqlState::from_code(code), format!("SQLSTATE {code}"))
    }

    #[test]
    fn a_write_refused_by_a_read_only_server_is_not_written_and_retryable() {
        let refused = failure("25006");
        assert!(
            matches!(
                refused,
                Failure::Transient {
                    retry: Retry::ReadOnly,
                    ..
                }
            ),
            "{refused:?}"
        );
        assert!(refused.is_transient(), "retried on another connection");
        assert!(refused.discards_connection(), "never handed out again");
        // The server answered: a refusal during COMMIT is no unknown outcome.
        assert!(!refused.leaves_commit_unknown());
        // Once no attempt is left: 503, retry later; never a final answer.
        let error = refused.into_error();
        assert!(matches!(error, Error::Unavailable { .. }), "{error:?}");
        assert_eq!(error.code(), ErrorCode::Unavailable);
    }

    #[test]
    fn a_lost_connection_leaves_a_commit_unknown() {
        // 08006 connection failure, 57P01 admin shutdown (a Patroni fast stop),
        // 57P02 crash shutdown, 57P03 cannot connect now (starting, promoting),
        // 40003 CockroachDB's ambiguous result.
        for code in [
            "08006", "08003", "57P01", "57P02", "57P03", "53300", "40003",
        ] {
            let lost = failure(code);
            assert!(lost.is_transient(), "{code}");
            assert!(
                lost.leaves_commit_unknown(),
                "{code}: a commit may have landed"
            );
            assert!(lost.discards_connection(), "{code}");
        }
        // A failure without a SQLSTATE (a closed socket, a timeout) is the same.
        let closed = Failure::connection("connection closed");
        assert!(closed.leaves_commit_unknown() && closed.discards_connection());
    }

    #[test]
    fn a_conflict_is_retried_on_the_same_connection() {
        for code in ["40001", "40P01", "55P03", "23505", "23514"] {
            let conflict = failure(code);
            assert!(conflict.is_transient(), "{code}");
            assert!(!conflict.leaves_commit_unknown(), "{code}");
            assert!(!conflict.discards_connection(), "{code}");
        }
    }

    #[test]
    fn other_server_errors_are_final_and_an_unknown_outcome_stays_retryable() {
        let undefined_table = failure("42P01");
        assert!(!undefined_table.is_transient());
        assert!(matches!(
            undefined_table.into_error(),
            Error::Storage { .. }
        ));
        // A commit whose outcome could not be found out: 503, never a refusal
        // (every ledger write is safe to repeat).
        let unresolved = Failure::Unresolved {
            cause: "commit outcome unknown".into(),
        };
        assert!(!unresolved.is_transient(), "not retried blindly");
        assert!(matches!(unresolved.into_error(), Error::Unavailable { .. }));
    }
}
