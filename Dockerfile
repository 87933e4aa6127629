# Build stage: compile the release binary.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY config ./config
RUN cargo build --release --locked --bin keywarden

# Runtime stage: a small Debian image with only the binary and the example config.
FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin keywarden
COPY --from=build /src/target/release/keywarden /usr/local/bin/keywarden
COPY config/keywarden.toml /etc/keywarden/keywarden.toml
USER keywarden
EXPOSE 6380
ENTRYPOINT ["/usr/local/bin/keywarden", "--config", "/etc/keywarden/keywarden.toml"]
# Inside a container the proxy must listen on every interface, so protected mode needs a
# password (the SHA-256 of it, in KEYWARDEN_REQUIREPASS_SHA256, or a mounted config with
# users); without one keywarden exits and says so. Override the upstream with
#   docker run -p 6380:6380 -e KEYWARDEN_REQUIREPASS_SHA256=<hex> keywarden \
#     --listen 0.0.0.0:6380 --upstream redis:6379
CMD ["--listen", "0.0.0.0:6380"]
