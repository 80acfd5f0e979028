# tokensync: build the operator, run it on a distroless base as a non-root user.
#   docker build -t ghcr.io/tokensync/tokensync:0.1.0 .
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY xtask ./xtask
COPY fakes ./fakes
RUN cargo build --release --locked --bin tokensync \
 && cp target/release/tokensync /tokensync

# glibc, CA certificates and a nonroot user (65532), nothing else
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /tokensync /usr/local/bin/tokensync
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/tokensync"]
CMD ["run"]
