FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
ENV SQLX_OFFLINE=true
RUN cargo build --release --bins

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/conveyor /src/target/release/conveyor-worker \
     /src/target/release/conveyor-scheduler /src/target/release/conveyor-sandbox /usr/local/bin/
COPY examples /srv/examples
