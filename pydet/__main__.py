"""``python -m pydet ...`` is the ``pydet`` command."""
from .cli import main

raise SystemExit(main())
