# One image for every role: `starsink controller` (the operator and webhook), and the
# `starsink loader` sidecar it injects. Build: docker build -t starsink .

FROM docker.io/library/rust:1.95.0-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY build.rs ./
COPY src ./src
COPY benches ./benches
RUN cargo build --profile dist --locked --bin starsink

# glibc, CA certificates and a non-root user (uid 65532), nothing else.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/dist/starsink /usr/local/bin/starsink
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/starsink"]
CMD ["--help"]
