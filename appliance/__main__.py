"""``python -m appliance`` is the same as the ``clawden`` console script."""

from appliance.cli import main

raise SystemExit(main())
