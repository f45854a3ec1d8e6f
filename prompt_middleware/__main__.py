"""`python -m prompt_middleware`: the `prompt-middleware` command."""

from .gateway.cli import main

raise SystemExit(main())
