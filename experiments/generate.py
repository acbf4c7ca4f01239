"""Generate with a run's base model and its adapter side by side:
``python experiments/generate.py --run <run dir> --prompt "..."``. Same as ``loraexp-generate``."""

import sys

from loraexp.cli.generate import main

if __name__ == "__main__":
    sys.exit(main())
