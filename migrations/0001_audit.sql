-- Sessions of every transport.
CREATE TABLE sessions (
    id          TEXT PRIMARY KEY,
    transport   TEXT NOT NULL,
    peer        TEXT NOT NULL,
    started_at  INTEGER NOT NULL,   -- unix milliseconds
    ended_at    INTEGER,
    bytes_in    INTEGER NOT NULL DEFAULT 0,
    bytes_out   INTEGER NOT NULL DEFAULT 0,
    end_reason  TEXT
);

-- Commands: the row is written before the process starts, completed when it ends.
CREATE TABLE commands (
    id          TEXT PRIMARY KEY,
    session_id  TEXT NOT NULL,
    transport   TEXT NOT NULL,
    peer        TEXT NOT NULL,
    command     TEXT NOT NULL,
    cwd         TEXT NOT NULL,
    started_at  INTEGER NOT NULL,
    ended_at    INTEGER,
    exit_code   INTEGER,
    signal      INTEGER,
    duration_ms INTEGER,
    bytes_out   INTEGER,
    truncated   INTEGER,
    error       TEXT
);
CREATE INDEX commands_started ON commands (started_at);

-- File transfers and the MD5 check of each.
CREATE TABLE transfers (
    id           TEXT PRIMARY KEY,
    session_id   TEXT NOT NULL,
    transport    TEXT NOT NULL,
    peer         TEXT NOT NULL,
    path         TEXT NOT NULL,
    direction    TEXT NOT NULL,     -- 'get' or 'put'
    size         INTEGER NOT NULL,
    bytes        INTEGER NOT NULL,
    md5          TEXT,
    expected_md5 TEXT,
    result       TEXT NOT NULL,     -- verified, mismatch, failed, cancelled
    started_at   INTEGER NOT NULL,
    ended_at     INTEGER NOT NULL
);
CREATE INDEX transfers_started ON transfers (started_at);

-- Durable copy of the digest cache: a digest is valid while size, mtime, inode and ctime match.
CREATE TABLE digests (
    path     TEXT PRIMARY KEY,
    size     INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    ino      INTEGER NOT NULL,
    ctime_ns INTEGER NOT NULL,
    md5      TEXT NOT NULL
);
