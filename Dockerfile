# ferry in a container.
#
#   docker build -t ferry .
#   docker run -d --name ferry -p 8888:8888 -p 8080:8080 \
#       -v ferry-root:/srv/ferry -v ferry-data:/var/lib/ferry ferry
#   docker logs ferry          # prints the generated token on the first start
#   docker stop -t 40 ferry    # more than --shutdown-grace (30 s), so transfers can finish
#
# Served files live in /srv/ferry and the SQLite database, token and recordings in
# /var/lib/ferry: two volumes, so either can be backed up or replaced on its own.

# ---- build ----------------------------------------------------------------------------------
FROM rust:1.95-bookworm AS build
WORKDIR /src

# Dependencies first, in a layer of their own: a change to ferry's sources does not rebuild them.
COPY Cargo.toml Cargo.lock ./
# ferry's MD5 is a crate of the workspace: it comes with the dependencies.
COPY src/md5 ./src/md5
RUN echo 'fn main() {}' > src/main.rs \
    && echo 'fn main() {}' > src/build.rs \
    && touch src/lib.rs \
    && cargo build --release --locked \
    && rm -rf src

COPY src ./src
COPY migrations ./migrations
COPY web ./web
# COPY keeps the files' own times, which can be older than the stub's build: touch them so
# cargo rebuilds ferry itself.
RUN touch src/main.rs src/lib.rs src/build.rs && cargo build --release --locked

# ---- run ------------------------------------------------------------------------------------
FROM debian:bookworm-slim

# tini runs as PID 1: it forwards SIGTERM to ferry and reaps the orphans of killed command
# groups. The base image already has sh and bash (the terminal's shell); ca-certificates are
# for the commands users run.
# Not pinned: a rebuild should pick up Debian's security updates.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates tini \
    && rm -rf /var/lib/apt/lists/*

# A dedicated unprivileged user (fixed ids, for volume ownership and runAsNonRoot checks);
# commands run as this user too.
RUN groupadd --system --gid 10001 ferry \
    && useradd --system --uid 10001 --gid ferry --home-dir /var/lib/ferry --shell /bin/bash ferry \
    && mkdir -p /srv/ferry /var/lib/ferry \
    && chown ferry:ferry /srv/ferry /var/lib/ferry \
    && chmod 0750 /var/lib/ferry

COPY --from=build /src/target/release/ferry /usr/local/bin/ferry

# Inside the container ferry listens on every interface; publish the ports to choose who
# reaches them (e.g. -p 127.0.0.1:8080:8080).
ENV FERRY_ROOT=/srv/ferry \
    FERRY_DATA_DIR=/var/lib/ferry \
    FERRY_TCP_ADDR=0.0.0.0:8888 \
    FERRY_HTTP_ADDR=0.0.0.0:8080
# Config file (tokens by hash, roles, [exec] sandbox): mount it read-only and pass its path, e.g.
#   docker run ... -v ./ferry.toml:/etc/ferry/ferry.toml:ro ferry serve --config /etc/ferry/ferry.toml
# or make that the default here:   CMD ["serve", "--config", "/etc/ferry/ferry.toml"]
# Other settings: any FERRY_* variable of `ferry serve --help`, e.g. -e FERRY_TOKEN=...

# Volumes are declared after the chown so new named volumes start owned by ferry.
VOLUME ["/srv/ferry", "/var/lib/ferry"]
EXPOSE 8888 8080
USER 10001:10001
WORKDIR /srv/ferry

ENTRYPOINT ["tini", "--", "ferry"]
CMD ["serve"]
