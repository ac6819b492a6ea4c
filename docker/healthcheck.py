"""HEALTHCHECK of the dyt-deploy images: exit 0 when dyt-serve answers ready (every model loaded)."""

import os
import sys
import urllib.request

url = f"http://127.0.0.1:{os.environ.get('DYT_PORT', '8000')}/v2/health/ready"
try:
    with urllib.request.urlopen(url, timeout=4) as response:
        sys.exit(0 if response.status == 200 else 1)
except OSError as err:  # connection refused while starting, HTTP 503 while models load
    print(f"not ready: {err}", file=sys.stderr)
    sys.exit(1)
