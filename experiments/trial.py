"""One trial of an exported sweep, as a W&B agent calls it: ``python experiments/trial.py
--config sweep.base.yaml --lora.r=8 ...``. Same as the ``loraexp-trial`` console script."""

import sys

from loraexp.cli.trial import main

if __name__ == "__main__":
    sys.exit(main())
