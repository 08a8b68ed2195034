# nargate, built with cargo in one stage and run from a small Debian in the next.
# `docker build -t nargate .`, or through compose/docker-compose.yml.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock rustfmt.toml ./
COPY src src
# Cargo.toml names the benchmarks, so their sources must be there for it to load.
COPY benches benches
RUN cargo build --release --locked --bin nargate

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/nargate /usr/local/bin/nargate
COPY config/nargate.toml /etc/nargate/nargate.toml
# The default configuration's fs backend keeps its data in ./nargate-data: a volume here.
RUN mkdir -p /var/lib/nargate && chown nobody /var/lib/nargate
WORKDIR /var/lib/nargate
VOLUME /var/lib/nargate
# Inside a container, every interface (publish the port on the host as you choose).
ENV NARGATE_LISTEN=0.0.0.0:9000
USER nobody
EXPOSE 9000
ENTRYPOINT ["nargate"]
CMD ["serve", "--config", "/etc/nargate/nargate.toml"]
