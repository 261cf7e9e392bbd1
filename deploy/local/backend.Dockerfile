# The demo backend for docker-compose.yaml: tests/src/bin/backend.rs, the backend the e2e tests
# and `make demo` run in-process, as a process of its own. It answers with its name and fails on
# demand through its control port (8081). Build from the repository root:
#   docker build -f deploy/local/backend.Dockerfile -t canary-gate/backend .
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p canary-e2e --bin backend

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/backend /usr/local/bin/backend
USER nonroot
EXPOSE 8080 8081
ENTRYPOINT ["/usr/local/bin/backend"]
CMD ["--help"]
