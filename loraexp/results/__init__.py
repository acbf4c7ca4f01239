"""Layer 2, what runs leave behind: the typed record (:mod:`.record`), run names and identities
(:mod:`.naming`), run files with atomic writes and locks (:mod:`.storage`), seed and bootstrap
intervals (:mod:`.statistics`), configurations compared (:mod:`.comparison`) and the sweep summary
(:mod:`.summary`). Reads and writes files; loads no model."""
