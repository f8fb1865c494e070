# Webhook Dispatcher tasks. `just --list` shows them all.
# Get `just` with `pip install rust-just` (seconds) or `cargo install just`.

set shell := ["bash", "-euo", "pipefail", "-c"]

# Run the service locally: a throwaway PostgreSQL unless DATABASE_URL is set,
# config/dev.yaml unless WEBHOOK_DISPATCHER_CONFIG is set.
run *ARGS:
    WEBHOOK_DISPATCHER_CONFIG="${WEBHOOK_DISPATCHER_CONFIG:-config/dev.yaml}" \
        scripts/with-postgres cargo run --locked -p dispatcher -- {{ARGS}}

# The whole test suite (starts its own PostgreSQL unless DATABASE_URL is set).
test *ARGS:
    cargo test --workspace --locked {{ARGS}}

# Formatting and clippy, warnings as errors.
lint:
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets --locked -- -D warnings

# The crate layering rules of docs/ARCHITECTURE.md.
check-layers:
    scripts/check-layers

# Apply migrations to DATABASE_URL (or the POSTGRESQL_* variables).
migrate:
    WEBHOOK_DISPATCHER_CONFIG="${WEBHOOK_DISPATCHER_CONFIG:-config/dev.yaml}" \
        cargo run --locked -p dispatcher -- migrate

# Validate a config file: `just check-config path/to/config.yaml`
# (`just check-config path/to/config.yaml --connect` also checks every peer).
check-config CONFIG="config/dispatcher_config.example.yaml" *ARGS:
    GITHUB_WEBHOOK_SECRET="${GITHUB_WEBHOOK_SECRET:-unset}" \
        cargo run --locked -q -p dispatcher -- --config {{CONFIG}} check-config {{ARGS}}

# Render every deploy/kustomize overlay and check each object strictly
# (part of `just test`; uses kubectl/kustomize too when installed).
manifests:
    cargo test --locked -p dispatcher-deploycheck

# Benchmarks of the release binary against same-run baselines
# (`just bench intake --seconds 5` runs one).
bench *ARGS:
    cargo build --release --locked -p dispatcher -p dispatcher-bench
    scripts/with-postgres target/release/dispatcher-bench --dispatcher target/release/dispatcher {{ARGS}}

# Advisories only when the RustSec database is on disk (scripts/deny says which).
# Supply chain (cargo-deny, deny.toml): licenses, banned crates, sources.
deny:
    scripts/deny

# From the committed seed corpus; 5 targets x 250000 = 1.25 million by default;
# `just fuzz 10000 cel` runs one target (docs/FUZZING.md).
# Every cargo-fuzz target (fuzz/, nightly + cargo-fuzz), RUNS executions each.
fuzz RUNS="250000" *TARGETS:
    nice -n 10 scripts/fuzz {{RUNS}} {{TARGETS}}

# Everything CI runs.
ci: lint check-layers deny test
