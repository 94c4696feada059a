-- Who opened each session: the token's name and its role (NULL for sessions older than roles).
ALTER TABLE sessions ADD COLUMN user TEXT;
ALTER TABLE sessions ADD COLUMN role TEXT;
