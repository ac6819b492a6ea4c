"""``python -m service.demo``: what ``make demo`` runs (see service.demo.run)."""

from .run import main

if __name__ == "__main__":
    raise SystemExit(main())
