"""``python -m megatron_mmr1.planning``: see :mod:`megatron_mmr1.planning.cli`."""

import sys

from megatron_mmr1.planning.cli import main

sys.exit(main(prog="python -m megatron_mmr1.planning"))
