"""LoRA fine-tuning experiments: ``python experiments/lora_finetune.py --task sst2 --mode ablation
--ablation-type rank``. Same as the ``loraexp`` console script; see ``--help``."""

import sys

from loraexp.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
