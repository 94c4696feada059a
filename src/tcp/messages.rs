//! The JSON control messages of the TCP protocol, shared by the server and the client.

use crate::core::error::{Code, Error};
use crate::core::exec::ExecRequest;
use crate::core::files::Entry;
use serde::{Deserialize, Serialize};

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u32 = 1;

/// The client's first frame.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Hello {
    /// Protocol version; must be 1.
    pub version: u32,
    /// The access token.
    #[serde(default)]
    pub token: Option<String>,
    /// Client name and version, for logs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
    /// Bytes of data the server may send on each stream before a window grant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<u32>,
    /// The largest frame the client accepts (length field value).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_frame: Option<u32>,
}

/// The server's answer to a good hello.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Welcome {
    /// Protocol version.
    pub version: u32,
    /// Server name and version.
    pub server: String,
    /// The session id (as in the audit log).
    pub session: String,
    /// The limits in force.
    pub limits: Limits,
    /// Optional parts of the protocol this server takes, such as [`FEATURE_MD5_TRAILER`]
    /// (absent from older servers' welcomes).
    #[serde(default)]
    pub features: Vec<String>,
}

/// The feature name of `put`'s `md5_trailer` (the MD5 sent in the `Eof` after the bytes).
pub const FEATURE_MD5_TRAILER: &str = "md5_trailer";

/// Limits announced in the welcome.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Limits {
    /// The largest frame the server accepts (length field value).
    pub max_frame: u32,
    /// Bytes of data the client may send on each stream before a window grant.
    pub window: u32,
    /// Longest command run time, ms.
    pub exec_timeout_ms: u64,
    /// Most output bytes of one command.
    pub max_output: u64,
    /// Most commands running at once on the server.
    pub max_concurrent_execs: u32,
}

/// An operation request, the payload of a `Request` frame.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Run a command.
    Exec(ExecRequest),
    /// Download a file.
    Get {
        /// Path under the root.
        path: String,
        /// Byte offset to start from.
        #[serde(default)]
        offset: u64,
    },
    /// Upload a file of `size` bytes.
    Put {
        /// Path under the root.
        path: String,
        /// Exact size in bytes.
        size: u64,
        /// The client's MD5 hex, checked before the file is renamed into place.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        md5: Option<String>,
        /// The MD5 comes after the data, in the `Eof` frame (`{"md5": M}`), so that a client
        /// can hash while it sends; checked as one given up front is.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        md5_trailer: bool,
    },
    /// List a directory.
    List {
        /// Path under the root (default: the root).
        #[serde(default)]
        path: String,
    },
    /// Describe one path.
    Stat {
        /// Path under the root.
        path: String,
    },
    /// Answered at once with an empty `End`.
    Ping {},
}

pub use crate::core::exec::ExecOutcome as ExecEnd;
pub use crate::core::transfer::{GetEnd, GetHeader, PutDone as PutEnd};

/// A batch of listing entries.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ListBatch {
    /// Entries, sorted by name across batches.
    pub entries: Vec<Entry>,
}

/// The end of a listing.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ListEnd {
    /// Entries sent in all.
    pub count: u64,
}

/// The payload of an `Error` frame.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    /// A stable code.
    pub code: String,
    /// A human message.
    pub message: String,
}

/// Longest error message sent; longer ones (echoing a huge path) are cut so the frame always fits.
const MAX_MESSAGE: usize = 1024;

impl From<&Error> for ErrorBody {
    fn from(e: &Error) -> Self {
        let mut message = e.message.clone();
        if message.len() > MAX_MESSAGE {
            let mut cut = MAX_MESSAGE;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
            message.push('…');
        }
        ErrorBody {
            code: e.code.as_str().to_string(),
            message,
        }
    }
}

impl From<ErrorBody> for Error {
    fn from(b: ErrorBody) -> Self {
        Error::new(Code::parse(&b.code), b.message)
    }
}

/// The payload of the `Eof` frame that ends a `put` with `md5_trailer`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PutTrailer {
    /// The MD5 hex of the bytes sent.
    pub md5: String,
}
