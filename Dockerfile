# ferry in a container: `docker build -t ferry . && docker run -p 8888:8888 -v ferry-data:/data ferry`
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY migrations ./migrations
COPY web ./web
RUN cargo build --release --locked

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates tini && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/ferry /usr/local/bin/ferry
ENV FERRY_ROOT=/data/root FERRY_DATA_DIR=/data/state FERRY_TCP_ADDR=0.0.0.0:8888 FERRY_HTTP_ADDR=0.0.0.0:8080
VOLUME /data
EXPOSE 8888 8080
# tini as PID 1 reaps the orphans of killed command groups.
ENTRYPOINT ["tini", "--", "ferry"]
CMD ["serve"]
