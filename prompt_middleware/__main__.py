"""`python -m prompt_middleware`: the `prompt-middleware` command."""

from .cli import main

raise SystemExit(main())
