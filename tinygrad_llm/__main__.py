"""``python -m tinygrad_llm``: the same as the ``tinygrad-llm`` command."""

from tinygrad_llm.cli import main

raise SystemExit(main())
