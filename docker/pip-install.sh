#!/bin/sh
# pip install "$@" during an image build. One script so that every pip call, including the
# isolated environment pip builds the project in, sees the same sources: environment variables
# reach pip's subprocesses where command-line options do not.
#   /wheelhouse       wheels from the build context (docker/wheelhouse/), always searched first
#   OFFLINE=1         the wheelhouse alone (air-gapped builds)
#   INDEX_URL, EXTRA_INDEX_URL  a mirror or an extra index (build arguments)
#   /run/secrets/ca_bundle      the CA bundle of a TLS-intercepting proxy (build secret)
set -eu
export PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_FIND_LINKS=/wheelhouse
if [ -s /run/secrets/ca_bundle ]; then export PIP_CERT=/run/secrets/ca_bundle; fi
if [ -n "${INDEX_URL:-}" ]; then export PIP_INDEX_URL="$INDEX_URL"; fi
if [ -n "${EXTRA_INDEX_URL:-}" ]; then export PIP_EXTRA_INDEX_URL="$EXTRA_INDEX_URL"; fi
if [ "${OFFLINE:-0}" = 1 ]; then export PIP_NO_INDEX=1; fi
exec pip install "$@"
