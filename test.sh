#!/usr/bin/env bash
# The whole test suite (the README's test command): unit, integration and
# chaos tests. Needs python3 for the CPython reference of the darts job.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
exec cargo test --locked "$@"
