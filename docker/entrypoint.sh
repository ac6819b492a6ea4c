#!/bin/sh
# Entry point of the dyt-deploy images.
#   (no arguments)           dyt-serve --repository $DYT_REPOSITORY --host 0.0.0.0 --port $DYT_PORT
#   --workers 2 ...          the same with these options added (a repeated option: the last wins)
#   dyt-export ARGS | sh ... that command instead
set -e
if [ "$#" -eq 0 ] || [ "${1#-}" != "$1" ]; then
    set -- dyt-serve --repository "${DYT_REPOSITORY:-/models}" --host 0.0.0.0 --port "${DYT_PORT:-8000}" \
        --provider "${DYT_PROVIDER:-cpu}" "$@"
fi
exec "$@"
