"""``python -m symnet``: the symnet command line (``symnet.cli``)."""
from .cli import main

raise SystemExit(main())
