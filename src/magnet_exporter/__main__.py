"""`python -m magnet_exporter`."""

from magnet_exporter.cli import main

raise SystemExit(main())
