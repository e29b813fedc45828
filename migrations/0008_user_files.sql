-- Files that customers upload (owned by the file service): where each lives in S3, what its
-- bytes are (checked, not only declared) and who owns it.
CREATE TABLE files.user_files (
    id            uuid PRIMARY KEY,
    owner         text        NOT NULL,
    file_name     text        NOT NULL,
    content_type  text        NOT NULL,
    size_bytes    bigint      NOT NULL CHECK (size_bytes >= 0),
    sha256        text        NOT NULL,
    bucket        text        NOT NULL,
    object_key    text        NOT NULL,
    multipart     boolean     NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX user_files_owner ON files.user_files (owner, created_at DESC);
