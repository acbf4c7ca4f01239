"""Write docs/configuration.md from the config schema's help metadata:
``.venv/bin/python scripts/gen_config_reference.py``."""

from pathlib import Path

from loraexp.config.reference import render_reference

if __name__ == "__main__":
    path = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"
    path.write_text(render_reference())
    print(f"wrote {path}")
