"""Layer 1, the configuration: the schema (every setting, its default and help), the run types
(:mod:`.methods`, a leaf), loading and merging with OmegaConf (:mod:`.load`), the value checks
(:mod:`.checks`), the rendered reference (:mod:`.reference`) and the device-aware ``auto`` dtypes
(:mod:`.precision`). Imports only :mod:`loraexp.errors`; nothing heavy."""
