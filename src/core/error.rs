//! The one error type of the core, with the stable codes every transport sends.

use std::io;

/// A stable, transport-neutral error code; TCP and HTTP send it as a string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    /// The token is missing or wrong.
    Unauthorized,
    /// The token's role does not allow the operation.
    Forbidden,
    /// Too many failed authentications from this address; retry later.
    RateLimited,
    /// A browser page of another origin tried to open a terminal.
    ForbiddenOrigin,
    /// The path or stream does not exist.
    NotFound,
    /// The path leaves the served root or is not acceptable.
    ForbiddenPath,
    /// The received bytes do not match the announced MD5.
    ChecksumMismatch,
    /// A frame, body or output is over its limit.
    TooLarge,
    /// An operation ran past its deadline.
    Timeout,
    /// The request is malformed.
    BadRequest,
    /// A concurrency limit is reached; retry later.
    Busy,
    /// The client cancelled the operation.
    Cancelled,
    /// The request conflicts with the current state (a wrong upload offset, a non-empty directory).
    Conflict,
    /// The requested byte range lies outside the file (HTTP only).
    RangeNotSatisfiable,
    /// The method is not allowed on this path (HTTP only).
    MethodNotAllowed,
    /// Something failed inside the server; details are in its log.
    Internal,
}

impl Code {
    /// The wire spelling of the code.
    pub fn as_str(self) -> &'static str {
        match self {
            Code::Unauthorized => "unauthorized",
            Code::Forbidden => "forbidden",
            Code::RateLimited => "rate_limited",
            Code::ForbiddenOrigin => "forbidden_origin",
            Code::NotFound => "not_found",
            Code::ForbiddenPath => "forbidden_path",
            Code::ChecksumMismatch => "checksum_mismatch",
            Code::TooLarge => "too_large",
            Code::Timeout => "timeout",
            Code::BadRequest => "bad_request",
            Code::Busy => "busy",
            Code::Cancelled => "cancelled",
            Code::Conflict => "conflict",
            Code::RangeNotSatisfiable => "range_not_satisfiable",
            Code::MethodNotAllowed => "method_not_allowed",
            Code::Internal => "internal",
        }
    }

    /// Parses a wire code; unknown codes become `Internal`.
    pub fn parse(s: &str) -> Code {
        match s {
            "unauthorized" => Code::Unauthorized,
            "forbidden" => Code::Forbidden,
            "rate_limited" => Code::RateLimited,
            "forbidden_origin" => Code::ForbiddenOrigin,
            "not_found" => Code::NotFound,
            "forbidden_path" => Code::ForbiddenPath,
            "checksum_mismatch" => Code::ChecksumMismatch,
            "too_large" => Code::TooLarge,
            "timeout" => Code::Timeout,
            "bad_request" => Code::BadRequest,
            "busy" => Code::Busy,
            "cancelled" => Code::Cancelled,
            "conflict" => Code::Conflict,
            "range_not_satisfiable" => Code::RangeNotSatisfiable,
            "method_not_allowed" => Code::MethodNotAllowed,
            _ => Code::Internal,
        }
    }
}

impl std::fmt::Display for Code {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error with a stable code and a message that is safe to show a client.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{code}: {message}")]
pub struct Error {
    /// The stable code.
    pub code: Code,
    /// A human message; never carries internal details.
    pub message: String,
}

/// The core's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Builds an error from a code and a message.
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Error {
            code,
            message: message.into(),
        }
    }

    /// A `bad_request` error.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(Code::BadRequest, message)
    }

    /// A `forbidden_path` error.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(Code::ForbiddenPath, message)
    }

    /// An `internal` error: logs the detail and returns a generic message.
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        tracing::error!(%detail, "internal error");
        Self::new(Code::Internal, "internal server error")
    }

    /// Maps an I/O error met while working on `path` to a client-safe error.
    pub fn io(err: io::Error, path: &str) -> Self {
        match err.kind() {
            io::ErrorKind::NotFound => Self::new(Code::NotFound, format!("{path}: no such file")),
            io::ErrorKind::PermissionDenied => {
                Self::forbidden(format!("{path}: outside the served root or not permitted"))
            }
            io::ErrorKind::IsADirectory => Self::bad_request(format!("{path}: is a directory")),
            io::ErrorKind::NotADirectory => Self::new(
                Code::NotFound,
                format!("{path}: a parent is not a directory"),
            ),
            io::ErrorKind::InvalidInput | io::ErrorKind::InvalidFilename => {
                Self::bad_request(format!("{path}: invalid path"))
            }
            _ => {
                let escape = [rustix::io::Errno::LOOP, rustix::io::Errno::XDEV]
                    .iter()
                    .any(|e| err.raw_os_error() == Some(e.raw_os_error()));
                if escape {
                    Self::forbidden(format!("{path}: leads outside the served root"))
                } else {
                    Self::internal(format!("{path}: {err}"))
                }
            }
        }
    }
}
