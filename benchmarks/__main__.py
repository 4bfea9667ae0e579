"""Entry point: `python -m benchmarks` runs every benchmark and prints one table."""

from benchmarks.run import main

raise SystemExit(main())
