"""``python -m dltrain ...`` is the ``dltrain`` command."""
from dltrain.cli.main import main

raise SystemExit(main())
