# Sourced by the test scripts: run from the repository root with the release
# binary at hand.
REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_DIR"
BIN="${BIN:-target/release/analytics-processor}"
[[ -x "$BIN" ]] || cargo build --release
